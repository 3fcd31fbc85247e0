"""The evaluation report: bootstrap and calibration maths on known cases, and the command on real films."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from tune_ct.commands.evaluate import main
from tune_ct.evaluate.evaluation import Evaluation
from tune_ct.evaluate.full_report import full_report
from tune_ct.evaluate.statistics import _from_confusion, calibration
from tune_ct.data.files import CLASSES
from tune_ct.evaluate.metrics import classification_metrics
from tune_ct.model.networks import build_model


def test_confusion_shortcut_matches_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y, p = rng.integers(0, 3, 40), rng.integers(0, 4, 40)  # class 3 absent from the truth on purpose
        cm = np.bincount(y * 4 + p, minlength=16).reshape(4, 4)
        got = _from_confusion(cm)
        assert got["accuracy"] == pytest.approx(accuracy_score(y, p))
        with pytest.warns(UserWarning):
            assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
        assert got["macro_f1"] == pytest.approx(f1_score(y, p, labels=[0, 1, 2, 3], average="macro", zero_division=0))


def test_calibration_error_known_cases():
    y = np.array([0] * 10)
    probs = np.tile([0.9, 0.05, 0.03, 0.02], (10, 1))
    y_wrong = y.copy()
    y_wrong[0] = 1  # 9 of 10 right at confidence 0.9: calibrated
    assert calibration(y_wrong, probs)["ece"] == pytest.approx(0.0, abs=1e-9)
    assert calibration(y, probs)["ece"] == pytest.approx(0.1)  # all right at 0.9: under-confident by 0.1


def test_full_report_on_a_perfect_model():
    y = np.repeat(np.arange(4), 5)
    probs = np.eye(4)[y] * 0.97 + 0.01
    ev = Evaluation("test", [f"f{i}" for i in range(20)], y, probs, classification_metrics(y, y, "test_"),
                    origins=["a"] * 10 + ["b"] * 10)
    r = full_report(ev, n_boot=200)
    assert r["split"] == "test" and r["macro_f1"] == 1.0 and r["ci95"]["macro_f1"] == [1.0, 1.0]
    assert all(c["specificity"] == 1.0 and c["roc_auc_ovr"] == 1.0 for c in r["per_class"].values())
    assert r["confusion_matrix_row_normalised"] == np.eye(4).tolist()
    assert r["by_origin"]["a"]["n"] == 10 and r["by_origin"]["b"]["class_counts"]["Normal"] == 5


def test_evaluate_command_on_real_films(small_dataset, sources_csv, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.manual_seed(0)
    torch.save({"model": build_model("baseline_cnn", 32).state_dict(), "backbone": "baseline_cnn", "image_size": 32,
                "classes": list(CLASSES), "hp": {}, "epoch": 0}, ckpt / "model.pt")
    out = tmp_path / "report.json"
    rc = main(["--model", str(ckpt), "--data", str(small_dataset), "--workdir", str(tmp_path / "wd"),
               "--sources", str(sources_csv), "--bootstrap", "100", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["split"] == "test" and r["n"] == sum(c["support"] for c in r["per_class"].values()) > 0
    lo, hi = r["ci95"]["accuracy"]
    assert lo <= r["accuracy"] <= hi
    assert r["by_origin"] and sum(v["n"] for v in r["by_origin"].values()) == r["n"]
    assert 0.0 <= r["ece"] <= 1.0
