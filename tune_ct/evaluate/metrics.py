"""Classification metrics for imbalanced 4-class data (scikit-learn).

Accuracy alone hides a model that ignores the small classes, so every report carries balanced accuracy,
macro-F1 and per-class recall next to it.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, recall_score

from tune_ct.data.files import CLASSES


def metric_key(label: str) -> str:
    """'Viral Pneumonia' -> 'viral_pneumonia' for metric names (MLflow keys cannot hold spaces well)."""
    return label.lower().replace(" ", "_")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, prefix: str = "",
                           labels: list[int] | None = None) -> dict:
    """Flat dict: accuracy, balanced_accuracy, macro_f1, recall_<class>, and confusion_matrix (rows = truth, all
    four classes). `labels`: the classes the figures average over (default all four; films from another source
    may hold only some: an absent class would add an F1 of 0), recall reported for those only."""
    every = list(range(len(CLASSES)))
    labels = every if labels is None else list(labels)
    recalls = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out = {
        f"{prefix}accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        f"{prefix}macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    for k, r in zip(labels, recalls):
        out[f"{prefix}recall_{metric_key(CLASSES[k])}"] = float(r)
    out[f"{prefix}confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=every).tolist()
    return out


def per_class_recall(metrics: dict, prefix: str = "") -> dict[str, float]:
    return {label: metrics[f"{prefix}recall_{metric_key(label)}"] for label in CLASSES}


def majority_baseline_macro_f1(y_true: np.ndarray, labels: list[int] | None = None) -> float:
    """Macro-F1 of always predicting the most frequent class: the floor a real model must clear (over `labels`,
    class indices, default all four: the same classes as the model's macro-F1)."""
    majority = np.bincount(y_true, minlength=len(CLASSES)).argmax()
    return float(f1_score(y_true, np.full_like(y_true, majority), labels=labels or list(range(len(CLASSES))),
                          average="macro", zero_division=0))


def recall_per_class_present(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Recall of each class that has films in y_true (a class absent there has no recall to report)."""
    return {c: float((y_pred[y_true == k] == k).mean()) for k, c in enumerate(CLASSES) if (y_true == k).any()}
