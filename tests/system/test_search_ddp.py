"""The README's embedded defaults (local Ray, MLflow on SQLite in ./mlflow.db) with the train runner: one DDP trial of
two Ray Train workers. The actor runner's end-to-end checks read the shared search (test_search_shared.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from helpers.search_checks import check_child_runs, check_parent_run, check_summary, check_test_split_never_reached_a_trial
from helpers.search_cli import SPACES

TINY = SPACES / "tiny.yaml"


def search(tmp_path: Path, data: Path, *extra: str, space: Path = TINY, tracking_env: str | None = None) -> dict:
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if tracking_env:
        env["MLFLOW_TRACKING_URI"] = tracking_env
    proc = subprocess.run(
        [sys.executable, "-m", "tune_ct.search", "--data", str(data), "--space", str(space), "--limit-per-class", "16",
         "--experiment", "e2e", "--summary", str(summary), *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "locked test split" in proc.stdout
    # Ray Train's per-report dicts stay in the session logs (the DDP test runs the train runner).
    assert "TrainingReport(" not in proc.stdout + proc.stderr
    return json.loads(summary.read_text())


def test_search_embedded_defaults_one_ddp_trial_at_a_time(tmp_path, dev_films):
    """The README's default: local Ray, MLflow on SQLite in ./mlflow.db with artifacts in ./mlartifacts; here with
    two Ray Train workers per trial (DDP), which on 2 CPUs also means one trial at a time."""
    space = yaml.safe_load(TINY.read_text())
    space["search"].update(workers_per_trial=2, cpus_per_worker=1)
    # Every value fixed (a recipe, not a search): OptunaSearch refuses such a space, so the search runs it as is.
    space["params"].update(lr=3.0e-3, weight_decay=1.0e-4, batch_size=8, aug_rotation_deg=4.0, aug_crop_scale_min=0.9)
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(space))
    # One trial: a second would be the same fixed recipe again (the two-trial paths are the other tests').
    summary = search(tmp_path, dev_films, "--max-concurrent", "1", "--num-samples", "1", space=tmp_path / "ddp.yaml")
    assert summary["best_config"]["lr"] == 3.0e-3 and summary["best_config"]["batch_size"] == 8
    assert summary["optuna_study"] is None and not (tmp_path / "optuna.db").exists()  # nothing to sample: no study
    assert (tmp_path / "mlflow.db").is_file() and any((tmp_path / "mlartifacts").rglob("*.png"))
    check_summary(summary)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    check_parent_run(client, summary)
    check_child_runs(client, summary, trials=1)
    check_test_split_never_reached_a_trial(summary)
