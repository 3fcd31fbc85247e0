"""External evaluations of registered versions: an MLflow run per evaluation, and tags on the version.

The run (experiment `tune_ct-evaluations`) keeps the metrics, the JSON and the pictures; the version tags
`tune_ct.external.<name>.{macro_f1,hash,run_id}` put the figure where the registry and the promotion gate
`min_external_macro_f1` read it. A set whose content hash is the one the model's search selected on is refused:
a set used for selection cannot give the final figure.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from tune_ct.data.files import DataError
from tune_ct.evaluate.full_report import log_report
from tune_ct.registry.models import resolve_version
from tune_ct.track import tags
from tune_ct.track.runs import ensure_experiment

REGISTERED_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))")
log = logging.getLogger(__name__)


def registered_version(client, model_uri: str):
    """The ModelVersion behind models:/NAME/VERSION or models:/NAME@ALIAS; None for runs:/ or a checkpoint."""
    match = REGISTERED_URI.fullmatch(model_uri)
    if not match:
        return None
    version = match["version"]
    return resolve_version(client, match["name"], None if version == "latest" else version, match["alias"])


def refuse_selection_set(client, version, content_hash: str, set_name: str) -> None:
    """DataError when the version's search selected its model on this very set (same content hash)."""
    from mlflow.exceptions import MlflowException

    source = version.tags.get(tags.SOURCE_RUN_ID) or version.run_id
    if not source:
        log.warning("%s v%s has no source run: cannot check that %s was not its selection set", version.name,
                    version.version, set_name)
        return
    try:
        selected_on = client.get_run(source).data.tags.get(tags.SELECT_ON_HASH)
    except MlflowException as exc:
        log.warning("cannot read source run %s of %s v%s (%s): cannot check that %s was not its selection set",
                    source, version.name, version.version, exc.message, set_name)
        return
    if selected_on and selected_on.strip().lower() == content_hash.lower():
        raise DataError(f"external set {set_name} (content hash {content_hash}) is the set {version.name} "
                        f"v{version.version} was selected on (run {source}, tag {tags.SELECT_ON_HASH}): a set used "
                        "for model selection cannot give the final figure; evaluate on films the search never saw")


def log_against_model(client, run_id: str, version, report: dict) -> None:
    """The set's headline figures logged against the version's logged model and the set as a dataset (MLflow then
    shows them with the model, beside its locked-test figures)."""
    from tune_ct.track.logged_models import DatasetRef, log_model_figures, version_model_id

    model_id = version_model_id(version)
    if not model_id:  # versions registered before MLflow 3's logged models
        return
    figures = {f"external_{k}": report[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
    log_model_figures(client, run_id, model_id, figures, DatasetRef(report["name"], report["content_hash"]))


def local_artifact_root(tracking_uri: str) -> Path | None:
    """Beside a local SQLite store (sqlite:////dir/mlflow.db -> /dir/mlartifacts), as a search's runs are;
    None for a server or a file store, which place artifacts themselves."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve().parent / "mlartifacts"


def log_external_evaluation(client, tracking_uri: str, version, report: dict) -> str:
    """An evaluation run with the report, then the version tags (after: a tag always points at a whole run)."""
    experiment_id = ensure_experiment(client, tags.EVALUATIONS_EXPERIMENT, local_artifact_root(tracking_uri))
    name, title = report["name"], f"{version.name} v{version.version}"
    run_tags = {tags.ROLE: tags.ROLE_EXTERNAL, tags.MODEL_NAME: version.name,
                tags.MODEL_VERSION: str(version.version), tags.MODEL_URI: report.get("model", ""),
                **{tags.EXTERNAL + k: str(v) for k, v in {
                    "name": name, "hash": report["content_hash"], "n": report["n"],
                    "classes": ",".join(report["classes_present"]), "root": report["root"],
                    "unreadable": len(report["unreadable"])}.items()}}
    run = client.create_run(experiment_id, run_name=f"external-{name}-{version.name}-v{version.version}",
                            tags=run_tags)
    run_id = run.info.run_id
    try:
        log_report(client, run_id, report, f"{title} on {name}")
        log_against_model(client, run_id, version, report)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    # Full precision: a gate at 0.6 must not pass a 0.59996 rounded to 0.6000.
    for what, value in (("macro_f1", repr(float(report["macro_f1"]))), ("hash", report["content_hash"]),
                        ("n", str(report["n"])), ("run_id", run_id)):
        client.set_model_version_tag(version.name, str(version.version), tags.external_figure(name, what), value)
    return run_id
