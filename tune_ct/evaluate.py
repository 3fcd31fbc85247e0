"""Stage 6: evaluate a trained model once on the locked test split (never used for tuning)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tune_ct.cache import open_or_build, write_subset
from tune_ct.files import CLASSES
from tune_ct.manifest import Manifest
from tune_ct.metrics import classification_metrics, majority_baseline_macro_f1, per_class_recall
from tune_ct.models import build_model
from tune_ct.trial import CHECKPOINT_FILE, autocast_dtype, load_checkpoint_file, predict


@dataclass
class Evaluation:
    split: str
    files: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    metrics: dict  # flat, keys prefixed with the split name

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


def load_checkpoint_model(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a trial checkpoint (weights-only load) and return it with its saved metadata."""
    saved = load_checkpoint_file(Path(folder) / CHECKPOINT_FILE)
    model = build_model(saved["backbone"], int(saved["image_size"]))
    model.load_state_dict(saved["model"])
    model.eval()
    return model, saved


def write_test_subset(manifest: Manifest, root: Path, workdir: Path, limit: int | None, seed: int) -> Path:
    from tune_ct.data import sample

    entries = [e for e in sample(manifest, limit, seed) if e.split == "test"]
    path = workdir / "subsets" / f"{manifest.hash}{f'-limit{limit}' if limit else ''}.test.json"
    write_subset(path, root, entries, manifest.hash)
    return path


def evaluate_model(model: torch.nn.Module, image_size: int, subset_path: Path, cache_root: Path,
                   split: str = "test", batch_size: int = 64, device: str | None = None) -> Evaluation:
    device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = open_or_build(subset_path, image_size, cache_root)
    idx = data.indices(split)
    if len(idx) == 0:
        raise ValueError(f"subset {subset_path} has no {split} images")
    model = model.to(device_t).to(memory_format=torch.channels_last)
    probs = predict(model, data.pixels, idx, batch_size, device_t, autocast_dtype("auto", device_t))
    y_true = data.labels[idx]
    metrics = classification_metrics(y_true, probs.argmax(1), prefix=f"{split}_")
    return Evaluation(split, [data.files[i] for i in idx], y_true, probs, metrics)
