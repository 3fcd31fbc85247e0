"""MLflow 3's models of a search: one LoggedModel per trial that reported, so MLflow can compare the trials as
models (metrics per model and dataset, sorting, `mlflow.search_logged_models`), and the registered version's
link to the trial it came from.

A trial's model is external: its weights stay where Tune keeps the trial's best checkpoint (the Tune storage; on
a cluster that is shared storage), named by the tag CHECKPOINT_URI; only MLflow's small MLmodel stub is stored.
Its figures are its best epoch's, named `best_<metric>` (best_val_macro_f1, ...): MLflow ties a model's metrics
to a run's metrics, and under the per-epoch names they would add a second point at that epoch to the trial's run.
When that storage is cleaned, the model's record, params and metrics stay, and the checkpoint URI then names
nothing. The registered version is a full logged model of the winner (weights in MLflow), tagged with the
winner's trial model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlflow.entities import Metric

from tune_ct.track import tags

TRIAL_MODEL_TYPE = "tune_ct-trial"


@dataclass(frozen=True)
class DatasetRef:
    """A dataset as MLflow ties metrics to it: its name and digest (as logged in the run's dataset inputs)."""

    name: str
    digest: str


@dataclass(frozen=True)
class TrialModel:
    trial_id: str
    run_id: str  # the trial's child run
    name: str
    checkpoint_uri: str  # the kept best checkpoint, in the Tune storage
    epoch: int  # its best epoch
    stopped_early: str  # no | asha | time_budget
    params: dict[str, str]  # backbone, image size, preprocessing
    val_metrics: dict[str, float]  # at its best epoch, on the val split
    select_on_metrics: dict[str, float]  # ext_val_*, on the --select-on set


def existing_trial_models(experiment_id: str, parent_id: str) -> dict[str, str]:
    """trial id -> model id of the trial models this search already logged (a resumed search adds no second)."""
    import mlflow

    found = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                        filter_string=f"tags.`{tags.SEARCH_PARENT}` = '{parent_id}'")
    return {m.tags[tags.TRIAL_ID]: m.model_id for m in found if tags.TRIAL_ID in m.tags}


def log_trial_model(client, experiment_id: str, parent_id: str, model: TrialModel, val: DatasetRef,
                    select_on: DatasetRef | None) -> str:
    """The trial's external LoggedModel, linked to its child run, with its best epoch's figures tied to the
    datasets they were measured on. Returns its model id."""
    import mlflow

    logged = mlflow.create_external_model(
        name=model.name, source_run_id=model.run_id, model_type=TRIAL_MODEL_TYPE, experiment_id=experiment_id,
        params=model.params, tags={tags.TRIAL_ID: model.trial_id, tags.SEARCH_PARENT: parent_id,
                                   tags.CHECKPOINT_URI: model.checkpoint_uri, tags.BEST_EPOCH: str(model.epoch),
                                   tags.STOPPED_EARLY: model.stopped_early})
    best = {f"best_{k}": v for k, v in model.val_metrics.items()}
    log_model_figures(client, model.run_id, logged.model_id, best, val, model.epoch)
    if select_on is not None and model.select_on_metrics:
        best = {f"best_{k}": v for k, v in model.select_on_metrics.items()}
        log_model_figures(client, model.run_id, logged.model_id, best, select_on, model.epoch)
    return logged.model_id


def log_model_figures(client, run_id: str, model_id: str, metrics: dict[str, float], dataset: DatasetRef,
                      step: int = 0) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step, model_id=model_id, dataset_name=dataset.name,
                                             dataset_digest=dataset.digest) for k, v in metrics.items()])


def ranked_trial_models(experiment_id: str, parent_id: str, metric: str, mode: str, dataset: DatasetRef) -> list[dict]:
    """The search's trial models, best first on `metric` (at each trial's best epoch, `best_<metric>`) measured on
    `dataset`, read back through MLflow."""
    import mlflow

    key = f"best_{metric}"
    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id], output_format="list",
        filter_string=f"tags.`{tags.SEARCH_PARENT}` = '{parent_id}'",
        order_by=[{"field_name": f"metrics.{key}", "ascending": mode == "min", "dataset_name": dataset.name,
                   "dataset_digest": dataset.digest}])
    out = []
    for m in found:
        value = next((x.value for x in m.metrics or [] if x.key == key and x.dataset_digest == dataset.digest), None)
        out.append({"model_id": m.model_id, "name": m.name, "trial_id": m.tags.get(tags.TRIAL_ID),
                    "run_id": m.source_run_id, metric: value, "stopped_early": m.tags.get(tags.STOPPED_EARLY),
                    "checkpoint_uri": m.tags.get(tags.CHECKPOINT_URI)})
    return out


def version_model_id(version) -> str | None:
    """The logged model behind a registered version: its model_id, or the one its source URI names
    (`models:/m-...`; the registry leaves model_id empty for a version registered while logging)."""
    model_id = getattr(version, "model_id", None)
    source = getattr(version, "source", "") or ""
    return model_id or (source.rsplit("/", 1)[-1] if source.startswith("models:/m-") else None)


def link_registered(client, registered_model_id: str, trial_model_id: str, name: str, version: str) -> None:
    """The registered version's logged model and the winner's trial model name each other."""
    client.set_logged_model_tags(registered_model_id, {tags.TRIAL_MODEL_ID: trial_model_id})
    client.set_logged_model_tags(trial_model_id, {tags.REGISTERED_AS: f"{name}/{version}"})
