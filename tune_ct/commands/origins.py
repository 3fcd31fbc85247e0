"""Leave-one-origin-out check: did the model learn the disease, or the hospital?

    python -m tune_ct.origins --data DIR --sources CSV --holdout ORIGIN [--summary summary.json | --config FILE]

Trains the same configuration twice with the same budget, once on all train/val images and once without the
images of one origin, then tests both on the locked test split (see tune_ct/evaluate/origins.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tune_ct.commands.common import add_data_args, console_logging, data_settings, exit_on, write_json
from tune_ct.data.files import CLASSES, DataError
from tune_ct.data.manifest import origin_map, read_sources
from tune_ct.data.prepare import DataSettings, Prepared, prepare
from tune_ct.data.subsets import write_split_subset
from tune_ct.evaluate.origins import compare, print_comparison
from tune_ct.train.space import PARAMS, SpaceError, load_space
from tune_ct.train.storage import resolve_storage


@dataclass(frozen=True)
class OriginsOptions:
    data: DataSettings
    holdout: str
    hp: dict
    storage: str
    address: str | None = None
    json: Path | None = None


def base_config(summary: Path | None, config: Path | None, epochs: int | None) -> dict:
    """Hyperparameters: a search summary's best_config, a space/params file with fixed values, or the defaults."""
    hp = {name: default for name, (_, _, _, default) in PARAMS.items()}
    if summary:
        hp.update(json.loads(Path(summary).read_text())["best_config"])
    elif config:
        space = load_space(config)
        ranged = [k for k, v in space.params.items() if isinstance(v, dict)]
        if ranged:
            raise SpaceError(f"{config}: params {', '.join(ranged)} are distributions; the check needs fixed values")
        hp.update(space.params)
    if epochs:
        hp["epochs"] = epochs
    return hp


def check_holdout(options: OriginsOptions) -> Prepared:
    """The held-out origin must exist: checked against the CSV first, so a typo does not wait for a manifest build
    over the whole dataset, then against the films present."""
    sources = options.data.sources
    if not sources:
        raise DataError("--sources is required: origins come from a CSV with file,origin columns")
    known = sorted(set(read_sources(sources).values()))
    if options.holdout not in known:
        raise DataError(f"--holdout {options.holdout!r} is not an origin in {sources}; known: {', '.join(known)}")
    prep = prepare(options.data)
    present = {e.origin for e in prep.manifest.entries}
    if options.holdout not in present:
        raise DataError(f"--holdout {options.holdout!r}: no image of {prep.root} comes from it; present: "
                        f"{', '.join(sorted(present))}")
    return prep


def train(options: OriginsOptions, subset: Path, name: str, segmenter: Path | None) -> Path:
    """One Ray Train run (no Tune: nothing is searched here); returns its last checkpoint folder."""
    from tune_ct.train.settings import RunSettings
    from tune_ct.train.trial import build_trainer

    run = RunSettings(subset_path=str(subset), cache_root=str(options.data.workdir / "cache"),
                      storage_path=options.storage, experiment=name, seed=options.data.seed,
                      segmenter_path=str(segmenter) if segmenter else None)
    return Path(build_trainer(options.hp, run, name, options.storage).fit().checkpoint.path)


def run_check(options: OriginsOptions) -> dict:
    import ray

    from tune_ct.evaluate.evaluation import evaluate_model, write_test_subset
    from tune_ct.model.checkpoint import load_checkpoint_model
    from tune_ct.model.preprocess import Preprocessing
    from tune_ct.train.segmenter import ensure_segmenter

    prep, data, holdout = check_holdout(options), options.data, options.holdout
    subsets, counts = {}, {}
    for name, keep in (("all_origins", None), (f"without_{holdout}", lambda e: e.origin != holdout)):
        subsets[name], entries = write_split_subset(prep.manifest, prep.root, data.workdir, data.limit_per_class,
                                                    data.seed, ("train", "val"), f"{name}.trainval", keep)
        counts[name] = [e for e in entries if e.split == "train"]
    missing = [c for c in CLASSES if not any(e.label == c for e in counts[f"without_{holdout}"])]
    test_subset = write_test_subset(prep.manifest, prep.root, data.workdir, data.limit_per_class, data.seed)
    segmenter = ensure_segmenter(prep, data.workdir, data.seed)[0] if options.hp.get("lung_crop") else None
    ray.init(address=options.address or "local")
    started = time.strftime("%Y%m%d-%H%M%S")
    try:
        evaluations = {}
        for name, subset in subsets.items():
            # A new name per check: Ray Train resumes a run of the same name and storage, which would score the
            # previous check's models under this check's configuration.
            run_name = f"origins-{holdout}-{name}-{started}"
            model, meta = load_checkpoint_model(train(options, subset, run_name, segmenter))
            evaluations[name] = evaluate_model(model, int(meta["image_size"]), test_subset, data.workdir / "cache",
                                               origins=origin_map(prep.manifest),
                                               preprocessing=Preprocessing.from_saved(meta))
    finally:
        ray.shutdown()
    result = {"holdout": holdout, "split": "test", "config": options.hp, "classes_without_training_images": missing,
              "train_images": {n: len(es) for n, es in counts.items()}, "models": compare(holdout, evaluations)}
    print_comparison(holdout, result["models"], missing)
    return result


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tune_ct.origins", description=__doc__.split("\n\n")[0])
    add_data_args(p, limit_help="N images per class from the locked splits (smoke runs)")
    p.add_argument("--holdout", required=True, help="the origin to leave out of training, e.g. kermany-pediatric")
    p.add_argument("--summary", type=Path, help="a search --summary JSON: use its best_config")
    p.add_argument("--config", type=Path, help="a space YAML whose params are all fixed values")
    p.add_argument("--epochs", type=int, help="override the epochs of the configuration")
    p.add_argument("--storage", help="Ray Train storage (default ./ray_results)")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    p.add_argument("--json", type=Path, help="write the comparison here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console_logging()

    def run() -> int:
        options = OriginsOptions(data=data_settings(args), holdout=args.holdout,
                                 hp=base_config(args.summary, args.config, args.epochs),
                                 storage=resolve_storage(args.storage), address=args.address, json=args.json)
        result = run_check(options)
        if options.json:
            write_json(options.json, result)
        return 0

    return exit_on((DataError, SpaceError), run)


if __name__ == "__main__":
    sys.exit(main())
