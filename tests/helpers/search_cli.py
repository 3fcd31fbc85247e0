"""`python -m tune_ct.search` as a user runs it, in a test's own folder (MLflow and Optuna on SQLite there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPACES = REPO / "tests" / "spaces"


def run_search_cli(cwd: Path, data: Path, space: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`python -m tune_ct.search` on `limit 16` films per class in `cwd` (MLflow and Optuna on SQLite there);
    asserts it exits 0 and returns the process and its summary."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_AIR_NEW_OUTPUT")}
    proc = subprocess.run(
        [sys.executable, "-m", "tune_ct.search", "--data", str(data), "--space", space, "--limit-per-class", "16",
         "--summary", "summary.json", *extra], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((cwd / "summary.json").read_text())
