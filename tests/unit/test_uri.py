"""Tracking URI resolution (tune_ct/track/uri.py): --tracking-uri, then $MLFLOW_TRACKING_URI, then SQLite in the
working folder; `connect` points mlflow's tracking and registry URIs at the same store."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.tracking import _model_registry, _tracking_service

from tune_ct.track.uri import TRACKING_ENV, connect, default_tracking_uri, is_remote, resolve_tracking_uri


def test_flag_wins_over_the_environment():
    assert resolve_tracking_uri("http://flag:5000", {TRACKING_ENV: "http://env:5000"}) == "http://flag:5000"


def test_environment_is_used_without_a_flag():
    assert resolve_tracking_uri(None, {TRACKING_ENV: "http://env:5000"}) == "http://env:5000"
    assert resolve_tracking_uri("", {TRACKING_ENV: "http://env:5000"}) == "http://env:5000"


def test_default_is_sqlite_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert resolve_tracking_uri(None, {}) == expected == default_tracking_uri()
    assert resolve_tracking_uri(None, {TRACKING_ENV: ""}) == expected  # an empty variable is no setting
    assert default_tracking_uri(tmp_path / "sub") == f"sqlite:///{(tmp_path / 'sub' / 'mlflow.db').resolve()}"


def test_the_process_environment_is_read_when_no_env_is_given(monkeypatch):
    monkeypatch.setenv(TRACKING_ENV, "http://from-os-environ:5000")
    assert resolve_tracking_uri(None) == "http://from-os-environ:5000"


@pytest.mark.parametrize("uri, remote", [("http://h:5000", True), ("https://h", True), ("databricks", True),
                                         ("sqlite:///x.db", False), ("/tmp/mlruns", False)])
def test_is_remote(uri, remote):
    assert is_remote(uri) is remote


@pytest.fixture
def restored_mlflow_uris(monkeypatch):
    """connect() sets mlflow's process-wide URIs (and their environment variables): put them back afterwards."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, "placeholder")  # recorded, so the undo restores the original (or its absence)
        monkeypatch.delenv(var)
    monkeypatch.setattr(_tracking_service.utils, "_tracking_uri", None)
    monkeypatch.setattr(_model_registry.utils, "_registry_uri", None)


def test_connect_points_tracking_and_registry_at_one_store(restored_mlflow_uris):
    uri = "http://127.0.0.1:9"  # nothing listens there: connect() itself sends no request
    client = connect(uri)
    assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
    assert client.tracking_uri == uri and client._registry_uri == uri
    # What mlflow's fluent API uses (log_model, models:/ downloads) resolves to the same store, and so do the
    # subprocesses it starts (they read the environment).
    default = mlflow.MlflowClient()
    assert default.tracking_uri == uri and default._registry_uri == uri
    assert os.environ["MLFLOW_TRACKING_URI"] == uri and os.environ["MLFLOW_REGISTRY_URI"] == uri


def test_connect_again_moves_both_uris(restored_mlflow_uris):
    connect("http://127.0.0.1:9")
    second = "http://127.0.0.1:10"
    client = connect(second)
    assert mlflow.get_tracking_uri() == second and mlflow.get_registry_uri() == second
    assert client.tracking_uri == second and client._registry_uri == second
