"""Shared fixtures: the real dev data, tiny real-image datasets, and a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.films import make_small_dataset
from helpers.servers import start_mlflow_server, stop_process

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


@pytest.fixture(scope="session")
def dev_films(data_dir, tmp_path_factory) -> Path:
    """64 real films per class in the Kaggle layout, copied once per session, for the searches that do not need the
    whole dev set (read-only: tests that change films take their own copy): hashing all 9,452 films costs each
    search in a fresh folder ~10 s. The shared search (system/conftest.py) runs on the whole set."""
    return make_small_dataset(data_dir, tmp_path_factory.mktemp("dev_films") / "COVID-19_Radiography_Dataset",
                              per_class=64)


@pytest.fixture
def small_dataset(data_dir, tmp_path) -> Path:
    return make_small_dataset(data_dir, tmp_path / "COVID-19_Radiography_Dataset", per_class=12)


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
