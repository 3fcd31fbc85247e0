"""Held-out origins (--holdout-origin): collections no trial trained or selected on, scored once at the end like
the locked test split, and reported per origin and pooled, each over the classes it has, with a 95% CI.

An origin with one class has no macro-F1 worth the name (it is that class's recall, F1 capped by it): the figure
is given and read as what it is, the recall beside it.
"""

from __future__ import annotations

import numpy as np

from tune_ct.data.files import CLASSES
from tune_ct.evaluate.evaluation import Evaluation, TestSet, evaluate_on
from tune_ct.evaluate.metrics import classification_metrics, majority_baseline_macro_f1
from tune_ct.evaluate.statistics import bootstrap_ci


def figures(y_true: np.ndarray, y_pred: np.ndarray, n_boot: int, seed: int) -> dict:
    """n, the classes present, macro-F1 over them with its CI, accuracy, balanced accuracy, recall per class."""
    present = [k for k in range(len(CLASSES)) if (y_true == k).any()]
    m = classification_metrics(y_true, y_pred, labels=present)
    ci = bootstrap_ci(y_true, y_pred, n_boot, seed, classes=[CLASSES[k] for k in present])
    return {
        "n": len(y_true), "classes": [CLASSES[k] for k in present],
        "macro_f1": m["macro_f1"], "macro_f1_ci95": ci.get("macro_f1"),
        "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
        "per_class_recall": {CLASSES[k]: float((y_pred[y_true == k] == k).mean()) for k in present},
        "majority_class_macro_f1": majority_baseline_macro_f1(y_true, present),
    }


def held_out_report(ev: Evaluation, n_boot: int = 1000, seed: int = 0) -> dict:
    """Pooled over every held-out film, and per origin."""
    y_pred = ev.probs.argmax(1)
    origins = np.asarray(ev.origins or ["unknown"] * len(ev.y_true))
    per_origin = {str(o): figures(ev.y_true[origins == o], y_pred[origins == o], n_boot, seed)
                  for o in sorted(set(origins.tolist()))}
    return {"split": ev.split, "pooled": figures(ev.y_true, y_pred, n_boot, seed), "per_origin": per_origin}


def score_held_out(model, meta, films: TestSet, n_boot: int = 1000, seed: int = 0) -> dict:
    return held_out_report(evaluate_on(model, meta, films), n_boot, seed)
