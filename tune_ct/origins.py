"""Leave-one-origin-out check: did the model learn the disease, or the hospital?

    python -m tune_ct.origins --data DIR --sources CSV --holdout ORIGIN [--summary summary.json | --config FILE]

Trains the same configuration twice with the same budget, once on all train/val images and once without the
images of one origin, then tests both on the locked test split. The held-out origin's test films are the
question: a model that learned the disease names them as well without ever seeing that hospital; a model that
learned the source calls them something else. On this database the sharpest case is `kermany-pediatric`: it
supplies all Viral Pneumonia films and some Normal ones, so a model that learned "child's chest = viral pneumonia"
shows it as Normal recall on those films.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tune_ct.cache import write_subset
from tune_ct.data import default_workdir, prepare, sample
from tune_ct.files import CLASSES, DataError
from tune_ct.manifest import read_sources
from tune_ct.space import PARAMS, SpaceError, load_space


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


def train(hp: dict, subset: Path, workdir: Path, storage: Path, name: str, seed: int) -> Path:
    """One Ray Train run (no Tune: nothing is searched here); returns the final checkpoint folder."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from tune_ct.trial import RunSettings, train_worker

    run = RunSettings(subset_path=str(subset), cache_root=str(workdir / "cache"), storage_path=str(storage),
                      experiment=name, seed=seed)
    trainer = TorchTrainer(
        train_loop_per_worker=train_worker,
        train_loop_config={"hp": hp, "run": asdict(run)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=name, storage_path=str(storage)),
    )
    result = trainer.fit()
    return Path(result.checkpoint.path)


def predicted_share(y_pred: np.ndarray) -> dict[str, float]:
    return {c: float((y_pred == k).mean()) for k, c in enumerate(CLASSES)} if len(y_pred) else {}


def compare(holdout: str, evaluations: dict) -> dict:
    """Per model: on the held-out origin's test films, recall per class and what they were called; on the rest,
    macro-F1. Same films, same budget: the difference is what that origin taught the model."""
    from sklearn.metrics import f1_score

    out = {}
    for model_name, ev in evaluations.items():
        origins = np.asarray(ev.origins)
        y_pred = ev.probs.argmax(1)
        held = origins == holdout
        yt, yp = ev.y_true[held], y_pred[held]
        out[model_name] = {
            "heldout_n": int(held.sum()),
            "heldout_accuracy": float((yt == yp).mean()) if held.any() else None,
            "heldout_recall": {c: float((yp[yt == k] == k).mean()) for k, c in enumerate(CLASSES) if (yt == k).any()},
            "heldout_predicted_as": predicted_share(yp),
            "other_origins_n": int((~held).sum()),
            # Over the classes those films have: a class absent there (Viral Pneumonia when the paediatric
            # collection is held out) would add an F1 of 0 and cap the macro-F1 at 0.75.
            "other_origins_macro_f1": float(f1_score(ev.y_true[~held], y_pred[~held],
                                                     labels=sorted(set(ev.y_true[~held].tolist())),
                                                     average="macro", zero_division=0)),
        }
    return out


def print_comparison(holdout: str, result: dict, missing_classes: list[str]) -> None:
    print(f"\nLeave-one-origin-out: {holdout} (locked test split; same config and budget for both models)")
    if missing_classes:
        print(f"  note: without {holdout}, no training images remain for {', '.join(missing_classes)}: "
              "that class cannot be predicted by the held-out model")
    width = max(len(m) for m in result) + 3
    print(f"  {'':<34}" + "".join(f"{m:>{width}}" for m in result))
    first = next(iter(result.values()))
    rows = [("test films of held-out origin (n)", lambda r: str(r["heldout_n"])),
            ("  accuracy", lambda r: f"{r['heldout_accuracy']:.3f}" if r["heldout_accuracy"] is not None else "-")]
    rows += [(f"  recall {c}", lambda r, c=c: f"{r['heldout_recall'][c]:.3f}") for c in first["heldout_recall"]]
    rows += [(f"  called {c}", lambda r, c=c: f"{r['heldout_predicted_as'].get(c, 0):.1%}") for c in CLASSES]
    rows += [("other origins' test films: macro-F1", lambda r: f"{r['other_origins_macro_f1']:.3f}")]
    for label, fmt in rows:
        print(f"  {label:<34}" + "".join(f"{fmt(r):>{width}}" for r in result.values()))


def run_check(args: argparse.Namespace) -> dict:
    import ray

    from tune_ct.evaluate import evaluate_model, load_checkpoint_model, write_test_subset

    if not args.sources:
        raise DataError("--sources is required: origins come from a CSV with file,origin columns")
    hp = base_config(args.summary, args.config, args.epochs)
    # Checked against the CSV first: a typo must not wait for a manifest build over the whole dataset.
    known = sorted(set(read_sources(args.sources).values()))
    if args.holdout not in known:
        raise DataError(f"--holdout {args.holdout!r} is not an origin in {args.sources}; known: {', '.join(known)}")
    workdir = (args.workdir or default_workdir()).resolve()
    prep = prepare(args.data, workdir, args.sources, args.seed, args.limit_per_class)
    present = {e.origin for e in prep.manifest.entries}
    if args.holdout not in present:
        raise DataError(f"--holdout {args.holdout!r}: no image of {args.data} comes from it; present: "
                        f"{', '.join(sorted(present))}")
    trainval = [e for e in sample(prep.manifest, args.limit_per_class, args.seed) if e.split in ("train", "val")]
    without = [e for e in trainval if e.origin != args.holdout]
    missing = [c for c in CLASSES if not any(e.label == c and e.split == "train" for e in without)]
    subsets = {}
    for name, entries in (("all_origins", trainval), (f"without_{args.holdout}", without)):
        subsets[name] = workdir / "subsets" / f"{prep.manifest.hash}-{name}.trainval.json"
        write_subset(subsets[name], prep.root, entries, prep.manifest.hash)
    test_subset = write_test_subset(prep.manifest, prep.root, workdir, args.limit_per_class, args.seed)
    origins = {e.file: e.origin for e in prep.manifest.entries}

    storage = Path(args.storage or "ray_results").resolve()
    ray.init(address=args.address or "local")
    try:
        evaluations = {}
        for name, subset in subsets.items():
            checkpoint = train(hp, subset, workdir, storage, f"origins-{args.holdout}-{name}", args.seed)
            model, meta = load_checkpoint_model(checkpoint)
            evaluations[name] = evaluate_model(model, int(meta["image_size"]), test_subset, workdir / "cache",
                                               origins=origins)
    finally:
        ray.shutdown()
    result = {"holdout": args.holdout, "split": "test", "config": hp, "classes_without_training_images": missing,
              "train_images": {n: sum(1 for e in es if e.split == "train") for n, es in
                               (("all_origins", trainval), (f"without_{args.holdout}", without))},
              "models": compare(args.holdout, evaluations)}
    print_comparison(args.holdout, result["models"], missing)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tune_ct.origins", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="dataset folder (default $TUNE_CT_DATA)")
    p.add_argument("--sources", type=Path, help="CSV with file,origin columns (required)")
    p.add_argument("--holdout", required=True, help="the origin to leave out of training, e.g. kermany-pediatric")
    p.add_argument("--summary", type=Path, help="a search --summary JSON: use its best_config")
    p.add_argument("--config", type=Path, help="a space YAML whose params are all fixed values")
    p.add_argument("--epochs", type=int, help="override the epochs of the configuration")
    p.add_argument("--limit-per-class", type=int, help="N images per class from the locked splits (smoke runs)")
    p.add_argument("--workdir", type=Path, help="manifests and caches (default ./.tune_ct)")
    p.add_argument("--storage", help="Ray Train storage (default ./ray_results)")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the comparison here")
    args = p.parse_args(argv)
    try:
        run_check(args)
    except (DataError, SpaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
