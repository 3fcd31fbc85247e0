"""Classification metrics for imbalanced 4-class data (scikit-learn), and the confusion-matrix picture.

Accuracy alone hides a model that ignores the small classes, so every report carries balanced accuracy,
macro-F1 and per-class recall next to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, recall_score

from tune_ct.files import CLASSES


def metric_key(label: str) -> str:
    """'Viral Pneumonia' -> 'viral_pneumonia' for metric names (MLflow keys cannot hold spaces well)."""
    return label.lower().replace(" ", "_")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, prefix: str = "") -> dict:
    """Flat dict: accuracy, balanced_accuracy, macro_f1, recall_<class>, and confusion_matrix (rows = truth)."""
    labels = list(range(len(CLASSES)))
    recalls = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out = {
        f"{prefix}accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        f"{prefix}macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    for label, r in zip(CLASSES, recalls):
        out[f"{prefix}recall_{metric_key(label)}"] = float(r)
    out[f"{prefix}confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def per_class_recall(metrics: dict, prefix: str = "") -> dict[str, float]:
    return {label: metrics[f"{prefix}recall_{metric_key(label)}"] for label in CLASSES}


def majority_baseline_macro_f1(y_true: np.ndarray) -> float:
    """Macro-F1 of always predicting the most frequent class: the floor a real model must clear."""
    majority = np.bincount(y_true, minlength=len(CLASSES)).argmax()
    return float(f1_score(y_true, np.full_like(y_true, majority), labels=list(range(len(CLASSES))),
                          average="macro", zero_division=0))


def plot_confusion_matrix(matrix, path: Path, title: str) -> Path:
    """Counts with row-normalised shading, so small classes are as visible as large ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASSES)), [c.replace(" ", "\n") for c in CLASSES], fontsize=8)
    ax.set_yticks(range(len(CLASSES)), [c.replace(" ", "\n") for c in CLASSES], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write and close a matplotlib figure (closing frees it: searches draw many)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
