"""The leave-one-origin-out check's training: the same configuration trained twice with the same budget, on every
train/val film and without one origin's films, each tested once on the locked test split through the one
evaluation every command uses (the comparison itself: tune_ct.evaluate.leave_one_out)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tune_ct.data.files import CLASSES, DataError
from tune_ct.data.manifest import read_sources
from tune_ct.data.prepare import DataSettings, Prepared, prepare
from tune_ct.data.subsets import write_split_subset


@dataclass(frozen=True)
class HoldoutOptions:
    data: DataSettings
    holdout: str
    hp: dict  # the configuration both models train with
    storage: str
    address: str | None = None


def check_holdout(options: HoldoutOptions) -> Prepared:
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


def train_one(options: HoldoutOptions, subset: Path, name: str, segmenter: Path | None) -> Path:
    """One Ray Train run (no Tune: nothing is searched here); returns its last checkpoint folder."""
    from tune_ct.train.settings import TrialSettings
    from tune_ct.train.trial import build_trainer

    settings = TrialSettings(subset_path=str(subset), cache_root=str(options.data.work.cache),
                             storage_path=options.storage, experiment=name, seed=options.data.seed,
                             segmenter_path=str(segmenter) if segmenter else None)
    return Path(build_trainer(options.hp, settings, name, options.storage).fit().checkpoint.path)


def holdout_subsets(options: HoldoutOptions, prep: Prepared) -> tuple[dict[str, Path], dict[str, int], list[str]]:
    """The train/val lists with and without the origin, their train counts, and the classes left without films."""
    data, holdout = options.data, options.holdout
    subsets, counts = {}, {}
    for name, keep in (("all_origins", None), (f"without_{holdout}", lambda e: e.origin != holdout)):
        subsets[name], entries = write_split_subset(prep.manifest, prep.root, data.work, data.limit_per_class,
                                                    data.seed, ("train", "val"), f"{name}.trainval", keep)
        counts[name] = [e for e in entries if e.split == "train"]
    missing = [c for c in CLASSES if not any(e.label == c for e in counts[f"without_{holdout}"])]
    return subsets, {n: len(es) for n, es in counts.items()}, missing


def run_holdout_check(options: HoldoutOptions) -> dict:
    import ray

    from tune_ct.evaluate.evaluation import evaluate_on, locked_split_of
    from tune_ct.evaluate.leave_one_out import compare
    from tune_ct.model.checkpoint import load_checkpoint_model
    from tune_ct.train.segmenter import ensure_segmenter
    from tune_ct.train.stop_signals import ignored_at_start, stop_on_signals

    prep, holdout = check_holdout(options), options.holdout
    subsets, counts, missing = holdout_subsets(options, prep)
    test = locked_split_of(prep, options.data)
    segmenter = ensure_segmenter(prep, options.data.work, options.data.seed)[0] if options.hp.get("lung_crop") else None
    ignored = ignored_at_start()
    ray.init(address=options.address or "local")
    started = time.strftime("%Y%m%d-%H%M%S")
    evaluations = {}
    try:
        with stop_on_signals(ignored):  # SIGTERM, SIGHUP and Ctrl-C stop both trainings cleanly
            for name, subset in subsets.items():
                # A new name per check: Ray Train resumes a run of the same name and storage, which would score
                # the previous check's models under this check's configuration.
                model, meta = load_checkpoint_model(train_one(options, subset, f"origins-{holdout}-{name}-{started}",
                                                              segmenter))
                evaluations[name] = evaluate_on(model, meta, test)
    finally:
        ray.shutdown()
    return {"holdout": holdout, "split": "test", "config": options.hp, "classes_without_training_images": missing,
            "train_images": counts, "models": compare(holdout, evaluations)}
