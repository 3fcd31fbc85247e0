"""The MLflow tracking URI, resolved one way for every command, and used for runs and registered models alike.

Order: --tracking-uri, then $MLFLOW_TRACKING_URI, then the embedded default (SQLite in the working folder).
MLflow resolves `models:/` URIs through its registry URI, which does not follow a client's tracking URI, so
`connect` points both at the one resolved value.
"""

from __future__ import annotations

import os
from pathlib import Path

TRACKING_ENV = "MLFLOW_TRACKING_URI"


def default_tracking_uri(folder: Path | None = None) -> str:
    return f"sqlite:///{(Path(folder or Path.cwd()) / 'mlflow.db').resolve()}"


def resolve_tracking_uri(flag: str | None, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return flag or env.get(TRACKING_ENV) or default_tracking_uri()


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def ui_address(uri: str) -> tuple[str, str | None]:
    """(the address of MLflow's UI for this store, the command that serves it or None): a server's own URL
    (without credentials), else `mlflow ui` on the local store at 127.0.0.1:5000."""
    from urllib.parse import urlsplit, urlunsplit

    if uri.startswith(("http://", "https://")):
        parts = urlsplit(uri)
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", "")), None
    return "http://127.0.0.1:5000", f"mlflow ui --backend-store-uri {uri}"


def ui_links(uri: str, experiment_id: str, run_id: str | None = None) -> list[str]:
    """What to open in a browser: the experiment in MLflow's model-training view (not its GenAI view, the default
    for experiments MLflow cannot place), and the run; with the `mlflow ui` command first for a local store."""
    base, serve = ui_address(uri)
    lines = [f"start the UI: {serve}"] if serve else []
    lines.append(f"experiment: {base}/#/experiments/{experiment_id}?workflowType=machine_learning")
    if run_id:
        lines.append(f"run: {base}/#/experiments/{experiment_id}/runs/{run_id}")
    return lines


def connect(uri: str):
    """An MlflowClient on `uri` for runs and the registry; mlflow's fluent API (log_model, download_artifacts
    of models:/ URIs) is pointed at the same store."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
