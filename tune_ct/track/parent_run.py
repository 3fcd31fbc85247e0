"""A search's MLflow parent run: created with what defines the search, reopened on --resume, closed however the
search ends (children still RUNNING are closed KILLED when it is stopped), and given its final figures.

Every MLflow call the search stage makes about its parent run goes through here; the child runs of trials are
the TrialTracker's (tune_ct.track.tracker).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from tune_ct.track import tags
from tune_ct.track.datasets import log_inputs
from tune_ct.track.runs import ensure_experiment
from tune_ct.track.uri import is_remote


def open_experiment(client, name: str, tracking_uri: str) -> str:
    """The experiment's id (created with artifacts in ./mlartifacts beside a local store)."""
    return ensure_experiment(client, name, None if is_remote(tracking_uri) else Path("mlartifacts"))


def create_parent_run(client, experiment_id: str, name: str, run_tags: Mapping[str, str],
                      params: Mapping[str, object], inputs=(), files: tuple[str, ...] = ()) -> str:
    """A new parent run named after the search, tagged with its role and `run_tags`."""
    run = client.create_run(experiment_id, run_name=name,
                            tags={tags.ROLE: tags.ROLE_SEARCH, tags.TUNE_EXPERIMENT: name, **run_tags})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    if inputs:
        log_inputs(client, run_id, inputs)
    for file in files:
        client.log_artifact(run_id, file)
    return run_id


def reopen_parent_run(client, run_id: str) -> None:
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, tags.RESUMED, time.strftime("%Y-%m-%dT%H:%M:%S"))


def recorded_tag(client, run_id: str, name: str) -> str | None:
    return client.get_run(run_id).data.tags.get(name)


def close_interrupted(client, experiment_id: str, run_id: str) -> list[str]:
    """A stopped search: its children still RUNNING closed KILLED, they and the parent tagged interrupted."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S")
    children = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'")
    closed = []
    for child in (c for c in children if c.info.status == "RUNNING"):
        client.set_tag(child.info.run_id, tags.INTERRUPTED, when)
        client.set_terminated(child.info.run_id, "KILLED")
        closed.append(child.info.run_id)
    client.set_tag(run_id, tags.INTERRUPTED, when)
    return closed


def terminate(client, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status)


def log_figures(client, run_id: str, metrics: Mapping[str, float], run_tags: Mapping[str, str] | None = None) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)) for k, v in (run_tags or {}).items()])


def describe(client, run_id: str, markdown: str) -> None:
    """The run's description: what MLflow's UI shows first."""
    client.set_tag(run_id, MLFLOW_RUN_NOTE, markdown)
