"""Searches that several system tests read: each runs once per session, and every test that needs one asserts on
it (a search costs tens of seconds on 2 cores; its claims are many)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.search_cli import SPACES


@dataclass(frozen=True)
class SharedSearch:
    folder: Path  # the working folder it ran in (optuna.db and .tune_ct there; MLflow on the test server)
    summary_file: Path
    output: str  # stdout + stderr
    tracking_uri: str
    experiment: str
    register_name: str
    name: str  # --name: the Tune experiment, the parent run's name, the Optuna study


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory, data_dir, mlflow_server) -> SharedSearch:
    """The README's command at test size: 3 trials of tests/spaces/tiny.yaml (actor runner, 2 at a time) on 16
    films per class, the tracking server given by MLFLOW_TRACKING_URI alone, the Optuna study in ./optuna.db."""
    folder = tmp_path_factory.mktemp("tiny_search")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_AIR_NEW_OUTPUT")}
    env.pop("TUNE_CT_WORKDIR", None)  # the search's work folder is ./.tune_ct here, as for a new user
    env["MLFLOW_TRACKING_URI"] = mlflow_server
    proc = subprocess.run(
        [sys.executable, "-m", "tune_ct.search", "--data", str(data_dir), "--space", str(SPACES / "tiny.yaml"),
         "--limit-per-class", "16", "--num-samples", "3", "--max-concurrent", "2", "--experiment", "e2e",
         "--register-name", "e2e-model", "--name", "study-e2e", "--summary", "summary.json"],
        cwd=folder, capture_output=True, text=True, timeout=600, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return SharedSearch(folder, folder / "summary.json", output, mlflow_server, "e2e", "e2e-model", "study-e2e")
