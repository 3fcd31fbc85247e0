"""Evaluate a trained model on one split of a dataset: the locked test split, never used for tuning.

`locked_test_set` updates the manifest (the split stays locked) and writes the test file list; `evaluate_model`
runs the model over the cached images of a split and keeps the probabilities for every later figure.
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
from tune_ct.data.prepare import DataSettings, prepare
from tune_ct.data.subsets import write_split_subset
from tune_ct.evaluate.metrics import classification_metrics, majority_baseline_macro_f1, per_class_recall
from tune_ct.model.inference import autocast_dtype, predict
from tune_ct.model.preprocess import Preprocessing, per_film, preprocessing_of

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


def write_test_subset(manifest: Manifest, root: Path, workdir: Path, limit: int | None, seed: int) -> Path:
    return write_split_subset(manifest, root, workdir, limit, seed, ("test",), "test")[0]


def evaluate_model(model: torch.nn.Module, image_size: int, subset_path: Path, cache_root: Path,
                   split: str = "test", batch_size: int = 64, device: str | None = None,
                   origins: dict[str, str] | None = None, preprocessing: Preprocessing | None = None) -> Evaluation:
    """`preprocessing`: what the model was trained with (equalisation, lung crop), applied to every film."""
    device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = open_or_build(subset_path, image_size, cache_root, per_film=per_film(preprocessing))
    idx = data.indices(split)
    if len(idx) == 0:
        raise ValueError(f"subset {subset_path} has no {split} images")
    model = model.to(device_t).to(memory_format=torch.channels_last)
    probs = predict(model, data.pixels, idx, batch_size, device_t, autocast_dtype("auto", device_t))
    y_true = data.labels[idx]
    metrics = classification_metrics(y_true, probs.argmax(1), prefix=f"{split}_")
    files = [data.files[i] for i in idx]
    known = [origins.get(f, "unknown") for f in files] if origins else None
    if known and all(o == "unknown" for o in known):
        known = None
    return Evaluation(split, files, y_true, probs, metrics, known)


@dataclass
class TestSet:
    """The locked test split of a dataset, ready to evaluate any model on."""

    root: Path
    manifest: Manifest
    subset: Path
    cache_root: Path
    origins: dict[str, str]


def locked_test_set(settings: DataSettings) -> TestSet:
    """Update the manifest (the split stays locked) and write the test file list; origins from the manifest,
    or from a sources CSV when given."""
    prep = prepare(settings)
    if prep.report.test_missing or prep.report.test_changed:
        log.warning("WARNING: the locked test split changed since it was locked (see `python -m tune_ct.data`); "
                    "figures are not comparable with earlier ones")
    subset = write_test_subset(prep.manifest, prep.root, settings.workdir, settings.limit_per_class, settings.seed)
    return TestSet(prep.root, prep.manifest, subset, settings.workdir / "cache",
                   origin_map(prep.manifest, settings.sources))


def evaluate_on(model, meta: dict, test: TestSet) -> Evaluation:
    return evaluate_model(model, int(meta["image_size"]), test.subset, test.cache_root, origins=test.origins,
                          preprocessing=preprocessing_of(meta))
