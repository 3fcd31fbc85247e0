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


def connect(uri: str):
    """An MlflowClient on `uri` for runs and the registry; mlflow's fluent API (log_model, download_artifacts
    of models:/ URIs) is pointed at the same store."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
