"""Small MLflow helpers every stage uses: the experiment, code version, flat params, a JSON artifact."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

MAX_PARAM_LENGTH = 6000


def code_version() -> str:
    """git commit of the checkout (with -dirty), else the package version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"tune_ct-{version('tune_ct')}"


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Experiment id, creating it (with local artifacts under artifact_root for file/SQLite stores); either way it
    is marked a model-training experiment, so MLflow's UI opens it in that view."""
    from tune_ct.track.tags import EXPERIMENT_KIND, MODEL_TRAINING

    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
            client.set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return existing.experiment_id
    location = (Path(artifact_root).resolve() / name).as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_TRAINING})


def flat_params(config: dict, prefix: str = "") -> list[Param]:
    out = []
    for key, value in sorted(config.items()):
        if isinstance(value, dict):
            out.extend(flat_params(value, f"{prefix}{key}."))
        else:
            out.append(Param(f"{prefix}{key}", str(value)[:MAX_PARAM_LENGTH]))
    return out


def log_json(client: MlflowClient, run_id: str, obj, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(obj, indent=1, default=str))
        client.log_artifact(run_id, str(path))
