"""The trial runners' settings and the light modules the Ray processes import (no Ray cluster here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tune_ct.search.results import epochs_with_checkpoints
from tune_ct.train.space import SpaceError, load_space, parse_duration


def space_file(tmp_path: Path, **search) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"search": search, "params": {"backbone": "baseline_cnn", "epochs": 2}}))
    return path


@pytest.mark.parametrize("workers, runner, resolved", [(1, "auto", "actor"), (2, "auto", "train"),
                                                        (1, "train", "train"), (1, "actor", "actor")])
def test_auto_runner_is_actor_for_one_worker_and_train_for_ddp(tmp_path, workers, runner, resolved):
    space = load_space(space_file(tmp_path, workers_per_trial=workers, runner=runner))
    assert space.search.resolved_runner == resolved


def test_actor_runner_with_ddp_workers_is_refused_naming_the_key(tmp_path):
    with pytest.raises(SpaceError, match=r"search\.runner.*workers_per_trial 2"):
        load_space(space_file(tmp_path, workers_per_trial=2, runner="actor"))
    with pytest.raises(SpaceError, match=r"search\.runner.*one of auto, actor, train"):
        load_space(space_file(tmp_path, runner="threads"))


@pytest.mark.parametrize("text, seconds", [("15m", 900.0), ("90s", 90.0), ("1.5h", 5400.0), ("45", 45.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5m", "0", "m"])
def test_bad_time_budget_names_the_key(tmp_path, text):
    with pytest.raises(ValueError):
        parse_duration(text)
    with pytest.raises(SpaceError, match=r"search\.time_budget"):
        load_space(space_file(tmp_path, time_budget=text))


def test_time_budget_from_the_space(tmp_path):
    assert load_space(space_file(tmp_path, time_budget="15m")).search.time_budget_s == 900.0
    assert load_space(space_file(tmp_path)).search.time_budget_s is None


def test_actor_runner_checkpoints_are_matched_to_their_epochs():
    df = pd.DataFrame({"epoch": [1, 2, 3], "val_macro_f1": [0.2, 0.5, 0.4], "trial_id": ["t"] * 3})
    kept = {2: "/s/ckpt2", 3: "/s/ckpt3"}  # epoch 1's checkpoint was deleted (not among the best two)
    out = epochs_with_checkpoints(df, kept)
    assert out["checkpoint_path"].tolist()[1:] == ["/s/ckpt2", "/s/ckpt3"] and pd.isna(out["checkpoint_path"][0])
    train_runner = df.assign(checkpoint_path=["a", "b", "c"])  # the train runner reports the path itself
    assert epochs_with_checkpoints(train_runner, kept) is train_runner


def test_the_modules_ray_processes_unpickle_import_no_torch_timm_or_sklearn():
    """The trial actor (train runner) and the Train controller only unpickle tune_trial / train_worker / the
    settings; importing torch there would cost every trial seconds."""
    code = ("import sys, tune_ct.train.trial, tune_ct.train.settings, tune_ct.train.actor; "
            "print(sorted(m for m in ('torch', 'timm', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_reused_actor_frees_each_trials_garbage_and_freezes_the_imports_once():
    """What a trial leaves (here a tensor held by a reference cycle, as models and optimizers are) is freed as the
    trial ends although the imports are frozen out of the collector; they are frozen once per process. In a
    subprocess: freezing the test process's own objects would outlive the test."""
    code = """
import gc, weakref
from types import SimpleNamespace
import torch
from tune_ct.train.actor import release_memory, start_clean

assert gc.get_freeze_count() == 0
start_clean(SimpleNamespace(gpus_per_worker=0))
frozen = gc.get_freeze_count()
assert frozen > 0

class Trial: pass
trial = Trial(); trial.cycle = trial; trial.weights = torch.zeros(1_000_000)
gone = weakref.ref(trial); del trial
assert gone() is not None  # a cycle: reference counting alone does not free it
release_memory(torch.device("cpu"))
assert gone() is None
start_clean(SimpleNamespace(gpus_per_worker=0))
assert gc.get_freeze_count() == frozen, "frozen again"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
