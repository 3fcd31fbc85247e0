"""Score a trained model once on a set of films it was never tuned on: the locked test split, or an external set.

`locked_test_set` / `locked_split_of` give the locked test split of a dataset as a `TestSet` (the manifest updated,
the split kept locked, the test file list written); `evaluate_on` is the one way a model is scored on a TestSet:
the search's winner, `evaluate`, `promote`, `origins` and external sets all go through it. It runs the model over
the cached films (with the model's own film preprocessing) and keeps the probabilities for every later figure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tune_ct.data.cache import open_or_build
from tune_ct.data.files import CLASSES
from tune_ct.data.manifest import Manifest, origin_map
from tune_ct.data.prepare import DataSettings, Prepared, held_out_suffix, prepare
from tune_ct.data.subsets import HELD_OUT_SPLIT, write_held_out_subset, write_split_subset
from tune_ct.evaluate.metrics import classification_metrics, majority_baseline_macro_f1, per_class_recall
from tune_ct.model.checkpoint import CheckpointMeta
from tune_ct.model.inference import autocast_dtype, predict
from tune_ct.model.preprocess import per_film

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    split: str
    files: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    metrics: dict  # flat, keys prefixed with the split name
    origins: list[str] | None = None  # per file, when the manifest or a sources CSV knows them

    def headline(self) -> dict:
        p = f"{self.split}_"
        return {
            "split": self.split,
            "n": int(len(self.y_true)),
            "accuracy": self.metrics[p + "accuracy"],
            "balanced_accuracy": self.metrics[p + "balanced_accuracy"],
            "macro_f1": self.metrics[p + "macro_f1"],
            "per_class_recall": per_class_recall(self.metrics, p),
            "confusion_matrix": self.metrics[p + "confusion_matrix"],
            "confusion_matrix_labels": list(CLASSES),
            "majority_class_macro_f1": majority_baseline_macro_f1(self.y_true),
        }


@dataclass(frozen=True)
class TestSet:
    """Films a model is scored on once: the locked test split of a dataset (`manifest` set), or an external set."""

    root: Path
    subset: Path
    cache_root: Path
    origins: dict[str, str]
    split: str = "test"
    manifest: Manifest | None = None


def locked_split_of(prep: Prepared, settings: DataSettings) -> TestSet:
    """The locked test split of a prepared dataset (the same sample --limit-per-class draws for the search);
    origins from the manifest, or from a sources CSV when given. Held-out origins are not in it: they are
    scored on their own (held_out_set_of)."""
    subset = write_split_subset(prep.manifest, prep.root, settings.work, settings.limit_per_class, settings.seed,
                                ("test",), "test" + held_out_suffix(settings.held_out), keep=settings.keeps)[0]
    return TestSet(prep.root, subset, settings.work.cache, origin_map(prep.manifest, settings.sources),
                   manifest=prep.manifest)


def held_out_set_of(prep: Prepared, settings: DataSettings) -> TestSet | None:
    """Every film of the held-out origins (--holdout-origin), all splits: no trial trained or selected on them."""
    if not settings.held_out:
        return None
    subset = write_held_out_subset(prep.manifest, prep.root, settings.work, settings.seed, settings.held_out)[0]
    return TestSet(prep.root, subset, settings.work.cache, origin_map(prep.manifest, settings.sources),
                   split=HELD_OUT_SPLIT, manifest=prep.manifest)


def locked_test_set(settings: DataSettings) -> TestSet:
    """Update the manifest (the split stays locked) and give its test split."""
    prep = prepare(settings)
    if prep.report.test_missing or prep.report.test_changed:
        log.warning("WARNING: the locked test split changed since it was locked (see `python -m tune_ct.data`); "
                    "figures are not comparable with earlier ones")
    return locked_split_of(prep, settings)


def evaluate_on(model: torch.nn.Module, meta: CheckpointMeta, test: TestSet, batch_size: int = 64,
                device: str | None = None) -> Evaluation:
    """The model's figures on the test set's films, read through the model's own film preprocessing."""
    device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = open_or_build(test.subset, meta.image_size, test.cache_root, per_film=per_film(meta.film))
    idx = data.indices(test.split)
    if len(idx) == 0:
        raise ValueError(f"subset {test.subset} has no {test.split} images")
    model = model.to(device_t).to(memory_format=torch.channels_last)
    probs = predict(model, data.pixels, idx, batch_size, device_t, autocast_dtype("auto", device_t))
    y_true = data.labels[idx]
    metrics = classification_metrics(y_true, probs.argmax(1), prefix=f"{test.split}_")
    files = [data.files[i] for i in idx]
    known = [test.origins.get(f, "unknown") for f in files] if test.origins else None
    if known and all(o == "unknown" for o in known):
        known = None
    return Evaluation(test.split, files, y_true, probs, metrics, known)
