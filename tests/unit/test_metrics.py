"""Metrics (tune_ct/evaluate/metrics.py) and evaluation statistics (tune_ct/evaluate/statistics.py) on small
examples worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tune_ct.data.files import CLASSES
from tune_ct.evaluate.metrics import (classification_metrics, majority_baseline_macro_f1, metric_key,
                                      per_class_recall, recall_per_class_present)
from tune_ct.evaluate.statistics import bootstrap_ci, by_origin, calibration

# Truth / prediction, classes 0 COVID, 1 Lung_Opacity, 2 Normal, 3 Viral Pneumonia.
Y_TRUE = np.array([0, 0, 1, 1, 2, 3])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])


def test_metric_keys_have_no_spaces_or_capitals():
    assert [metric_key(c) for c in CLASSES] == ["covid", "lung_opacity", "normal", "viral_pneumonia"]


def test_classification_metrics_on_a_worked_example():
    m = classification_metrics(Y_TRUE, Y_PRED, prefix="val_")
    assert set(m) == {"val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_recall_covid",
                      "val_recall_lung_opacity", "val_recall_normal", "val_recall_viral_pneumonia",
                      "val_confusion_matrix"}
    assert m["val_accuracy"] == pytest.approx(4 / 6)
    # Recall: COVID 1/2, Lung_Opacity 2/2, Normal 1/1, Viral Pneumonia 0/1.
    assert [m[f"val_recall_{metric_key(c)}"] for c in CLASSES] == [0.5, 1.0, 1.0, 0.0]
    assert m["val_balanced_accuracy"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    # F1: COVID P 1/2 R 1/2 -> 0.5; Lung_Opacity P 2/3 R 1 -> 0.8; Normal 1; Viral Pneumonia 0.
    assert m["val_macro_f1"] == pytest.approx((0.5 + 0.8 + 1.0 + 0.0) / 4)
    assert m["val_confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]  # rows = truth
    assert all(isinstance(v, float) for k, v in m.items() if k != "val_confusion_matrix")
    assert per_class_recall(m, "val_") == {"COVID": 0.5, "Lung_Opacity": 1.0, "Normal": 1.0, "Viral Pneumonia": 0.0}


def test_macro_f1_is_over_all_four_classes_even_when_one_is_absent():
    y = np.array([0, 0, 1, 2, 2])  # no Viral Pneumonia film
    m = classification_metrics(y, y)
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0  # over the classes present
    assert m["macro_f1"] == pytest.approx(0.75)  # the absent class counts as F1 0
    assert m["recall_viral_pneumonia"] == 0.0 and m["confusion_matrix"][3] == [0, 0, 0, 0]


def test_majority_baseline_predicts_the_most_frequent_class():
    y = np.array([0] * 6 + [1, 2, 3])
    # Always COVID: COVID precision 6/9, recall 1 -> F1 0.8; the other three 0.
    assert majority_baseline_macro_f1(y) == pytest.approx(0.8 / 4)
    # A tie goes to the first class in order; all one class present: F1 1 for it.
    assert majority_baseline_macro_f1(np.array([2, 2, 1, 1])) == pytest.approx((2 / 3) / 4)
    assert majority_baseline_macro_f1(np.array([3, 3, 3])) == pytest.approx(0.25)


def test_recall_per_class_present_leaves_absent_classes_out():
    y_true, y_pred = np.array([0, 0, 2, 2, 2]), np.array([0, 3, 2, 2, 0])
    assert recall_per_class_present(y_true, y_pred) == {"COVID": 0.5, "Normal": pytest.approx(2 / 3)}


def noisy_predictions(n: int = 200, accuracy: float = 0.7, seed: int = 3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    wrong = rng.random(n) > accuracy
    return y, np.where(wrong, (y + rng.integers(1, 4, n)) % 4, y)


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    y, p = noisy_predictions()
    point = classification_metrics(y, p)
    ci = bootstrap_ci(y, p, n_boot=300, seed=5)
    assert set(ci) == {"accuracy", "balanced_accuracy", "macro_f1", "covid_recall"}
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = ci[name]
        assert lo < point[name] < hi and hi - lo < 0.3, name
    covid = point["recall_covid"]
    assert ci["covid_recall"][0] < covid < ci["covid_recall"][1]
    assert bootstrap_ci(y, p, n_boot=300, seed=5) == ci  # same seed, same interval
    assert bootstrap_ci(y, p, n_boot=300, seed=6) != ci


def test_bootstrap_interval_narrows_with_more_images():
    small = bootstrap_ci(*noisy_predictions(n=60), n_boot=300)
    large = bootstrap_ci(*noisy_predictions(n=2000), n_boot=300)
    width = lambda ci: ci["accuracy"][1] - ci["accuracy"][0]  # noqa: E731
    assert width(large) < width(small) / 2


def test_bootstrap_of_a_perfect_model_is_a_point():
    y = np.repeat(np.arange(4), 10)
    ci = bootstrap_ci(y, y, n_boot=100)
    assert ci["accuracy"] == [1.0, 1.0] and ci["macro_f1"] == [1.0, 1.0]


def probs_with_confidence(conf: float, predicted: int) -> np.ndarray:
    rest = (1 - conf) / 3
    row = np.full(4, rest)
    row[predicted] = conf
    return row


def test_calibration_error_of_a_calibrated_model_is_zero():
    # 10 films at confidence 0.6 of which 6 right, 5 films at 0.8 of which 4 right: each bin is calibrated.
    truth = np.array([0] * 6 + [1] * 4 + [2] * 4 + [3])
    probs = np.stack([probs_with_confidence(0.6, 0)] * 10 + [probs_with_confidence(0.8, 2)] * 5)
    cal = calibration(truth, probs)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-9)
    filled = [b for b in cal["bins"] if b["n"]]
    assert [(b["n"], b["accuracy"]) for b in filled] == [(10, 0.6), (5, 0.8)]
    assert sum(b["n"] for b in cal["bins"]) == 15 and len(cal["bins"]) == 10


def test_calibration_error_of_an_overconfident_model():
    truth = np.array([0, 0, 1, 1])  # half right at confidence 0.9: ECE 0.4
    probs = np.stack([probs_with_confidence(0.9, 0)] * 4)
    assert calibration(truth, probs)["ece"] == pytest.approx(0.4)


def test_by_origin_splits_counts_accuracy_and_recall():
    y_true = np.array([0, 0, 2, 2, 3, 3])
    y_pred = np.array([0, 2, 2, 2, 3, 0])
    origins = ["h1", "h1", "h1", "h2", "kids", "kids"]
    out = by_origin(y_true, y_pred, origins)
    assert list(out) == ["h1", "h2", "kids"]
    assert out["h1"]["n"] == 3 and out["h1"]["class_counts"] == {"COVID": 2, "Lung_Opacity": 0, "Normal": 1,
                                                                  "Viral Pneumonia": 0}
    assert out["h1"]["accuracy"] == pytest.approx(2 / 3)
    assert out["h1"]["recall"] == {"COVID": 0.5, "Normal": 1.0}
    assert out["h2"]["accuracy"] == 1.0 and out["kids"]["recall"] == {"Viral Pneumonia": 0.5}
    assert out["kids"]["confusion_matrix"][3] == [1, 0, 0, 1]
    assert sum(o["n"] for o in out.values()) == len(y_true)
