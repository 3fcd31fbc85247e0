"""Statistics of an evaluation: bootstrap confidence intervals, calibration, per-class and per-origin figures."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from tune_ct.data.files import CLASSES
from tune_ct.evaluate.metrics import recall_per_class_present


def class_indices(classes=None) -> list[int]:
    """Indices into CLASSES of the classes a report covers (all four by default), in CLASSES order."""
    if classes is None:
        return list(range(len(CLASSES)))
    unknown = set(classes) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown class(es) {', '.join(sorted(unknown))}; expected some of {', '.join(CLASSES)}")
    return [k for k, c in enumerate(CLASSES) if c in classes]


def _from_confusion(cm: np.ndarray, classes: list[int] | None = None) -> dict[str, float]:
    """accuracy, balanced accuracy and macro-F1 from a confusion matrix, as sklearn defines them (balanced
    accuracy over the classes present; macro-F1 over `classes`, default all four, zero when undefined). Used for
    the bootstrap, where calling sklearn 1,000 times would dominate the run time."""
    cm = cm.astype(np.float64)
    tp, rows, cols = np.diag(cm), cm.sum(1), cm.sum(0)
    present = rows > 0
    denom = rows + cols
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    out = {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "balanced_accuracy": float((tp[present] / rows[present]).mean()) if present.any() else 0.0,
        "macro_f1": float(f1.mean() if classes is None else f1[classes].mean()),
    }
    if classes is None or 0 in classes:  # a set without COVID films has no COVID recall to bootstrap
        out["covid_recall"] = float(tp[0] / rows[0]) if rows[0] else float("nan")
    return out


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, classes=None) -> dict[str, list[float]]:
    """Percentile bootstrap over images (resampled with replacement) for the headline figures; macro-F1 over
    `classes` (default all four), the classes an external set has."""
    k = len(CLASSES)
    over = None if classes is None else class_indices(classes)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    codes = y_true * k + y_pred
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        cm = np.bincount(codes[rng.integers(0, n, n)], minlength=k * k).reshape(k, k)
        for name, value in _from_confusion(cm, over).items():
            samples.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    return {name: [float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100 - tail))]
            for name, v in samples.items()}


def calibration(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error of the top-class confidence, with the per-bin table of the reliability plot."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        acc = float(correct[mask].mean()) if n else None
        mean_conf = float(conf[mask].mean()) if n else None
        if n:
            ece += n / len(conf) * abs(acc - mean_conf)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n, "accuracy": acc,
                      "confidence": mean_conf})
    return {"ece": float(ece), "bins": table}


def per_class_figures(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, classes=None) -> dict:
    """Precision, recall, specificity, F1, one-vs-rest ROC-AUC and support of each class in `classes` (default
    all four); precision counts every film predicted as the class, whatever its truth."""
    labels = list(range(len(CLASSES)))
    covered = class_indices(classes)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                                     zero_division=0)
    out = {}
    for k in covered:
        name = CLASSES[k]
        negatives = y_true != k
        tn = int(((y_pred != k) & negatives).sum())
        positives = int((y_true == k).sum())
        auc = (float(roc_auc_score(y_true == k, probs[:, k]))
               if 0 < positives < len(y_true) else None)  # undefined with one class only
        out[name] = {"precision": float(precision[k]), "recall": float(recall[k]),
                     "specificity": float(tn / negatives.sum()) if negatives.any() else None,
                     "f1": float(f1[k]), "roc_auc_ovr": auc, "support": int(support[k])}
    return out


def by_origin(y_true: np.ndarray, y_pred: np.ndarray, origins: list[str]) -> dict:
    """Per origin: n, class counts, accuracy and per-class recall. A per-class origin makes these the same
    numbers as per class: read them as 'does the model work on films from this hospital', not as a new test."""
    out = {}
    origins_a = np.asarray(origins)
    for origin in sorted(set(origins)):
        mask = origins_a == origin
        yt, yp = y_true[mask], y_pred[mask]
        out[origin] = {
            "n": int(mask.sum()),
            "class_counts": {c: int((yt == k).sum()) for k, c in enumerate(CLASSES)},
            "accuracy": float((yt == yp).mean()),
            "recall": recall_per_class_present(yt, yp),
            "confusion_matrix": confusion_matrix(yt, yp, labels=list(range(len(CLASSES)))).tolist(),
        }
    return out
