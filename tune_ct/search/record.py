"""What a search writes on its MLflow parent run: what defines it (at the start) and, once the SearchSummary is
built, the winner's figures, the Pareto front, the test split as a dataset input, Optuna's plots, the
descriptions and summary.json itself (the same object the --summary file holds)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from tune_ct.data.files import CLASSES
from tune_ct.search.plan import SearchPlan
from tune_ct.search.summary import TRACKING_PREFIX, SearchSummary
from tune_ct.search.trials import ParentRun
from tune_ct.track import parent_run, tags
from tune_ct.track.messages import first_line

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"


def log_start_extras(plan: SearchPlan, client, parent: ParentRun) -> None:
    """Which origins are trained on, selected on and held out; the lung segmenter's held-out Dice and report, on a
    new parent run."""
    from mlflow.entities import RunTag

    from tune_ct.search.final_test import origin_roles

    client.log_batch(parent.run_id, tags=[RunTag(tags.ORIGINS + role, ",".join(names) or "-")
                                          for role, names in origin_roles(plan).items()])
    if plan.segmenter is None or plan.resumed_parent_id:
        return
    from tune_ct.track.runs import log_json

    parent_run.log_figures(client, parent.run_id, {"lung_segmenter_dice_heldout":
                                                   plan.segmenter.report["dice_heldout"]})
    log_json(client, parent.run_id, {**plan.segmenter.report, "file": str(plan.segmenter.path)},
             "lung_segmenter.json")


def record(summary: SearchSummary, plan: SearchPlan, client, parent: ParentRun) -> dict:
    """Everything the finished search logs; returns the outcome of this logging (tracking_* keys, which only the
    --summary file can hold). A tracking server down at this point costs the records, not the search."""
    from tune_ct.track.runs import log_json

    try:
        log_best(summary, client, parent)
        log_front(summary, plan, client, parent)
        log_test_input(summary, plan, client, parent)
        log_test_figures(summary, plan, client)
        log_held_out(summary, client, parent)
        log_study_plots(plan, client, parent)
        describe(summary, plan, client, parent)
        log_json(client, parent.run_id, summary.to_dict(), SUMMARY_FILE)
    except Exception as exc:  # noqa: BLE001 - the model is registered and the summary is on disk
        first = first_line(exc)
        log.warning(f"WARNING: the search's final records did not all reach MLflow ({first})")
        return {f"{TRACKING_PREFIX}final_records": f"failed: {first}"}
    return {f"{TRACKING_PREFIX}final_records": "logged"}


def log_best(summary: SearchSummary, client, parent: ParentRun) -> None:
    """The winner's val figures, which trial and epoch it was, and the test confusion matrix (its test figures:
    log_test_figures)."""
    from tune_ct.track.figures import plot_confusion_matrix

    test = summary.test_metrics
    metrics = {f"best_val_{k[4:]}": v for k, v in summary.val_metrics.items()
               if k.startswith("val_") and isinstance(v, (int, float))}
    metrics.update({f"best_{k}": v for k, v in (summary.best_costs or {}).items()})
    metrics["test_majority_class_macro_f1"] = test["majority_class_macro_f1"]
    parent_run.log_figures(client, parent.run_id, metrics, {
        tags.BEST_TRIAL_ID: summary.best_trial_id, tags.BEST_RUN_ID: summary.best_run_id or "",
        tags.BEST_CHECKPOINT: summary.best_checkpoint, tags.BEST_EPOCH: summary.best_epoch})
    with tempfile.TemporaryDirectory() as tmp:
        plot_confusion_matrix(test["confusion_matrix"], Path(tmp) / "test_confusion_matrix.png",
                              f"locked test split (n={test['n']}), best trial {summary.best_trial_id}")
        client.log_artifacts(parent.run_id, tmp)


def log_front(summary: SearchSummary, plan: SearchPlan, client, parent: ParentRun) -> None:
    """Multi-objective: the front as a plot and JSON on the parent run, its members' child runs tagged."""
    if not summary.pareto_front:
        return
    from tune_ct.search.console import describe_pick
    from tune_ct.track.figures import plot_pareto_front
    from tune_ct.track.runs import log_json

    names = list(summary.objectives)
    with tempfile.TemporaryDirectory() as tmp:
        plot_pareto_front(summary.trial_points, summary.pareto_front, names, Path(tmp) / "pareto_front.png",
                          f"{len(summary.trial_points)} trials, {len(summary.pareto_front)} on the front; "
                          f"pick: {describe_pick(plan.space.search.pick)}", summary.pick["limits"])
        client.log_artifacts(parent.run_id, tmp)
    log_json(client, parent.run_id, {"objectives": summary.objectives, "pick": summary.pick,
                                     "pareto_front": summary.pareto_front}, "pareto_front.json")
    for member in summary.pareto_front:
        if member["run_id"]:
            client.set_tag(member["run_id"], tags.PARETO_FRONT, "picked" if member["picked"] else "true")
    client.set_tag(parent.run_id, tags.PICK_MET, str(summary.pick["met"]).lower())


def log_test_input(summary: SearchSummary, plan: SearchPlan, client, parent: ParentRun) -> None:
    """The test split as the parent run's third dataset input, once it has been used (by the winner alone)."""
    from tune_ct.track.datasets import log_inputs

    log_inputs(client, parent.run_id, [test_split_input(summary, plan)])


def log_test_figures(summary: SearchSummary, plan: SearchPlan, client) -> None:
    """The winner's locked-test figures on the parent run, logged against the registered version's model and the
    test split (MLflow then lists them with the model), which is tied to the winner's trial model."""
    from tune_ct.evaluate.metrics import metric_key
    from tune_ct.track.logged_models import DatasetRef, link_registered, log_model_figures

    test = summary.test_metrics
    figures = {f"test_{k}": test[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
    figures.update({f"test_recall_{metric_key(c)}": v for c, v in test["per_class_recall"].items()})
    registered_id = summary.model_uri.rsplit("/", 1)[-1] if summary.model_uri.startswith("models:/m-") else None
    if registered_id is None:  # an older MLflow: no logged model to tie them to
        parent_run.log_figures(client, summary.parent_run_id, figures)
        return
    split = test_split_input(summary, plan)
    log_model_figures(client, summary.parent_run_id, registered_id, figures, DatasetRef(split.name, split.digest))
    if summary.best_model_id and summary.registered_version is not None:
        link_registered(client, registered_id, summary.best_model_id, summary.registered_model,
                        str(summary.registered_version))


def log_held_out(summary: SearchSummary, client, parent: ParentRun) -> None:
    """The held-out origins' figures on the parent run: pooled, and macro-F1 and recall per origin."""
    if not summary.held_out:
        return
    from tune_ct.evaluate.metrics import metric_key

    pooled, p = summary.held_out["pooled"], tags.HELD_OUT_PREFIX
    metrics = {f"{p}macro_f1": pooled["macro_f1"], f"{p}n": pooled["n"]}
    for origin, fig in summary.held_out["per_origin"].items():
        metrics[f"{p}{origin}_macro_f1"] = fig["macro_f1"]
        metrics.update({f"{p}{origin}_recall_{metric_key(c)}": r for c, r in fig["per_class_recall"].items()})
    parent_run.log_figures(client, parent.run_id, metrics)


def test_split_input(summary: SearchSummary, plan: SearchPlan):
    """The locked test split as the dataset input it is logged as (the films the winner was scored on)."""
    from tune_ct.track.datasets import split_input

    matrix = summary.test_metrics["confusion_matrix"]
    labels = [c for c, row in zip(CLASSES, matrix) for _ in range(sum(row))]
    return split_input(plan.data, "test", labels, plan.options.data.limit_per_class)


def log_study_plots(plan: SearchPlan, client, parent: ParentRun) -> None:
    """Optuna's history, importance and parallel-coordinate plots of the finished study, under optuna/."""
    from tune_ct.track.study import load_study, study_plots

    study = load_study(plan.study_storage, plan.name) if plan.study_storage else None
    if study is None:
        return
    plots = ["optuna_history.png", "optuna_importances.png", "optuna_parallel_coordinate.png"]
    if plan.space.search.multi_objective:
        plots.append("optuna_pareto_front.png")
    with tempfile.TemporaryDirectory() as tmp:
        if study_plots(study, Path(tmp), tuple(plots)):
            client.log_artifacts(parent.run_id, tmp, "optuna")


def describe(summary: SearchSummary, plan: SearchPlan, client, parent: ParentRun) -> None:
    """What MLflow's UI shows first: the parent run's description and the registered version's."""
    from tune_ct.search.notes import search_note, version_note

    parent_run.describe(client, parent.run_id, search_note(summary, plan.options.tracking_uri))
    if summary.registered_version is not None:
        client.update_model_version(summary.registered_model, str(summary.registered_version),
                                    description=version_note(summary))
