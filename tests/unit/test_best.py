"""Model selection (tune_ct/train/best.py): the best epoch of any trial by the val metric, among the epochs whose
checkpoint still exists. Tune's ResultGrid is stood in for by (config, per-epoch DataFrame) pairs, its own shape."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tune_ct.train.best import best_trial

NAN = math.nan


def epochs(trial_id: str, f1: list[float], loss: list[float] | None = None, ckpt: list | None = None) -> pd.DataFrame:
    n = len(f1)
    return pd.DataFrame({
        "trial_id": [trial_id] * n,
        "epoch": list(range(1, n + 1)),
        "val_macro_f1": f1,
        "val_loss": loss or [1.0] * n,
        "val_accuracy": [x / 2 for x in f1],
        "val_confusion_matrix": [[[i, 0], [0, i]] for i in range(n)],
        "train_loss": [9.0] * n,
        "checkpoint_path": ckpt if ckpt is not None else [f"/ckpt/{trial_id}/{e}" for e in range(1, n + 1)],
    })


def everything(_path: str) -> bool:
    return True


def test_max_mode_picks_the_best_epoch_of_any_trial():
    trials = [({"lr": 0.1}, epochs("a", [0.3, 0.5, 0.4])), ({"lr": 0.2}, epochs("b", [0.2, 0.6, 0.55]))]
    best = best_trial(trials, "val_macro_f1", "max", everything, {"a": "run-a", "b": "run-b"})
    assert (best.trial_id, best.epoch, best.config) == ("b", 2, {"lr": 0.2})
    assert best.checkpoint_path == "/ckpt/b/2" and best.run_id == "run-b"
    assert best.val_metrics["val_macro_f1"] == 0.6 and best.val_metrics["val_accuracy"] == 0.3
    # val_* numbers of that epoch only; the confusion matrix under its own key; no train metrics.
    assert best.val_metrics["confusion_matrix"] == [[1, 0], [0, 1]]
    assert "val_confusion_matrix" not in best.val_metrics and "train_loss" not in best.val_metrics


def test_min_mode_picks_the_lowest_loss():
    trials = [({"lr": 0.1}, epochs("a", [0.9, 0.9], loss=[0.8, 0.3])),
              ({"lr": 0.2}, epochs("b", [0.1, 0.1], loss=[0.5, 0.2]))]
    best = best_trial(trials, "val_loss", "min", everything, {})
    assert (best.trial_id, best.epoch, best.val_metrics["val_loss"]) == ("b", 2, 0.2)
    # The same trials by F1 (max): the other trial.
    assert best_trial(trials, "val_macro_f1", "max", everything, {}).trial_id == "a"


def test_epochs_whose_checkpoint_was_deleted_do_not_count():
    trials = [({"lr": 0.1}, epochs("a", [0.3, 0.9, 0.4])), ({"lr": 0.2}, epochs("b", [0.5, 0.6, 0.7]))]
    kept = {"/ckpt/a/1", "/ckpt/a/3", "/ckpt/b/1", "/ckpt/b/3"}  # Ray Train kept only some checkpoints
    best = best_trial(trials, "val_macro_f1", "max", lambda p: p in kept, {})
    assert (best.trial_id, best.epoch, best.checkpoint_path) == ("b", 3, "/ckpt/b/3")

    only_a = {"/ckpt/a/1", "/ckpt/a/3"}
    best = best_trial(trials, "val_macro_f1", "max", lambda p: p in only_a, {})
    assert (best.trial_id, best.epoch) == ("a", 3)  # a's best existing epoch, not its deleted epoch 2


def test_rows_without_metric_or_checkpoint_are_dropped_before_the_exists_check():
    seen = []

    def exists(path: str) -> bool:
        seen.append(path)
        return True

    df = epochs("a", [0.2, NAN, 0.95, 0.5], ckpt=["/c/1", "/c/2", None, "/c/4"])
    best = best_trial([({}, df)], "val_macro_f1", "max", exists, {})
    assert best.epoch == 4  # epoch 3 scored best but has no checkpoint; epoch 2 has no metric
    assert sorted(seen) == ["/c/1", "/c/4"]  # no "None"/"nan" paths were looked up


def test_trials_without_the_metric_or_results_are_skipped():
    no_metric = epochs("x", [0.99]).drop(columns=["val_macro_f1"])
    no_ckpt_column = epochs("y", [0.98]).drop(columns=["checkpoint_path"])
    trials = [({"t": "x"}, no_metric), ({"t": "none"}, None), ({"t": "y"}, no_ckpt_column),
              ({"t": "z"}, epochs("z", [0.1]))]
    best = best_trial(trials, "val_macro_f1", "max", everything, {})
    assert best.trial_id == "z" and best.config == {"t": "z"}


def test_no_checkpoint_anywhere_is_a_runtime_error():
    trials = [({}, epochs("a", [0.5, 0.6])), ({}, epochs("b", [0.7], ckpt=[None])), ({}, None)]
    with pytest.raises(RuntimeError, match="no trial reported a checkpoint"):
        best_trial(trials, "val_macro_f1", "max", lambda p: False, {})
    with pytest.raises(RuntimeError):
        best_trial([], "val_macro_f1", "max", everything, {})


def test_run_id_is_looked_up_by_trial_id_and_none_when_unknown():
    trials = [({}, epochs("t1", [0.5]))]
    assert best_trial(trials, "val_macro_f1", "max", everything, {"t1": "abc", "t2": "def"}).run_id == "abc"
    assert best_trial(trials, "val_macro_f1", "max", everything, {"t2": "def"}).run_id is None


def test_ties_keep_the_first_trial_and_config_is_a_copy():
    config = {"lr": 0.1}
    trials = [(config, epochs("first", [0.5])), ({"lr": 0.2}, epochs("second", [0.5]))]
    best = best_trial(trials, "val_macro_f1", "max", everything, {})
    assert best.trial_id == "first"
    best.config["lr"] = 99
    assert config == {"lr": 0.1}
