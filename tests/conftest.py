"""Shared fixtures: the real dev data, tiny real-image datasets, and a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tune_ct.data.files import CLASSES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real X-rays (TUNE_CT_DATA, as .ci/run sets it)."""
    value = os.environ.get("TUNE_CT_DATA") or str(REPO.parent / "shared/data/COVID-19_Radiography_Dataset")
    path = Path(value).resolve()
    if not (path / "COVID" / "images").is_dir():
        pytest.fail(f"real dataset not found at {path}: set TUNE_CT_DATA to the COVID-19_Radiography_Dataset folder")
    return path


@pytest.fixture(scope="session")
def sources_csv(data_dir) -> Path:
    return data_dir.parent / "sources.csv"


def make_small_dataset(src: Path, dst: Path, per_class: int, start: int = 0) -> Path:
    """A dataset folder of `per_class` real images per class (copied, so tests may change them)."""
    for label in CLASSES:
        files = sorted((src / label / "images").iterdir())[start : start + per_class]
        out = dst / label / "images"
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, out / f.name)
    return dst


@pytest.fixture
def small_dataset(data_dir, tmp_path) -> Path:
    return make_small_dataset(data_dir, tmp_path / "COVID-19_Radiography_Dataset", per_class=12)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int | None = None, timeout: float = 90.0):
    """A real tracking server (SQLite + proxied artifacts), small-footprint settings, bound to 127.0.0.1."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited early: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"mlflow server did not answer /health within {timeout}s")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    yield uri
    stop_process(proc)


@pytest.fixture(autouse=True)
def mlflow_uris_restored():
    """tune_ct.track.uri.connect points MLflow's process-wide tracking and registry URIs (and their environment
    variables, which subprocesses inherit) at a test's store: give the next test the process as it was."""
    import mlflow

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    mlflow.set_tracking_uri(saved_env["MLFLOW_TRACKING_URI"])  # None: back to MLflow's own default
    mlflow.set_registry_uri(saved_env["MLFLOW_REGISTRY_URI"])
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run_search_cli(cwd: Path, data: Path, space: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`python -m tune_ct.search` on `limit 16` films per class in `cwd` (MLflow and Optuna on SQLite there);
    asserts it exits 0 and returns the process and its summary."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, "-m", "tune_ct.search", "--data", str(data), "--space", space, "--limit-per-class", "16",
         "--summary", "summary.json", *extra], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((cwd / "summary.json").read_text())
