"""End to end, on one real search (the `tiny_search` fixture: local Ray, actor-runner trials, Optuna TPE + ASHA on
real X-rays, a real MLflow server given by MLFLOW_TRACKING_URI alone): what it records, prints and registers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from helpers.search_checks import (check_child_runs, check_parent_run, check_study_tells_the_truth, check_summary,
                                  check_test_split_never_reached_a_trial)
from tune_ct.track import tags
from tune_ct.track.logged_models import version_model_id

MAX_LINES_3_TRIALS = 120  # measured: 111 lines (3 trials: ~12 table rows; the final summary ~80, with one line per
# hyperparameter of the winner: 24 of them)


@pytest.fixture(scope="module")
def searched(tiny_search):
    summary = json.loads(tiny_search.summary_file.read_text())
    return tiny_search, summary, MlflowClient(tiny_search.tracking_uri, registry_uri=tiny_search.tracking_uri)


def test_summary_names_its_splits_and_the_winner(searched):
    check_summary(searched[1])


def test_the_summary_on_mlflow_is_the_summary_file(searched):
    """One SearchSummary: the copy logged on the parent run equals the --summary file, apart from the outcome of
    logging it (tracking_*), which only the file can hold."""
    search, summary, client = searched
    local = Path(client.download_artifacts(summary["parent_run_id"], "summary.json", str(search.folder / "dl")))
    logged = json.loads(local.read_text())
    file_only = {k for k in summary if k not in logged}
    assert file_only == {"tracking_final_records"} and summary["tracking_final_records"] == "logged"
    assert logged == {k: v for k, v in summary.items() if k not in file_only}
    assert "orphan_child_runs" in logged and "stopped_by_time_budget" in logged and "time_budget_s" in logged


def test_runs_datasets_and_descriptions_are_on_the_server(searched):
    search, summary, client = searched
    assert not (search.folder / "mlflow.db").exists() and not (search.folder / "mlartifacts").exists()
    check_parent_run(client, summary)


def test_one_finished_child_run_per_trial_with_one_point_per_epoch(searched):
    check_child_runs(searched[2], searched[1], trials=3)


def test_the_test_split_never_reached_a_trial(searched):
    check_test_split_never_reached_a_trial(searched[1])


def test_the_winner_is_registered_and_the_report_reads_the_search(searched):
    search, summary, client = searched
    version = client.get_model_version(search.register_name, str(summary["registered_version"]))
    assert version.run_id == summary["parent_run_id"]
    test = summary["test_metrics"]
    assert f"Locked test split (n={test['n']})" in version.description
    assert f"macro-F1 {test['macro_f1']:.3f}" in version.description
    out = search.folder / "report"
    proc = subprocess.run([sys.executable, "-m", "tune_ct.report", "--experiment", search.experiment, "--out",
                           str(out), "--tracking-uri", search.tracking_uri], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "report.md").read_text()
    # The figures come from this search's locked-test evaluation, and every picture it links exists.
    assert f"Best model on the locked test split (n={test['n']})" in text
    assert f"| macro_f1 | {test['macro_f1']:.3f} |" in text
    assert f"chosen on val_macro_f1 (val) = {summary['selection']['value']:.3f}" in text
    assert "Wehbe" in text and "Lung focus" in text
    assert (f"Search history (Optuna, study `{search.name}` in "
            f"`sqlite:///{search.folder / 'optuna.db'}`)") in text
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "curves.png" in pictures and "evaluation/test_confusion_matrix.png" in pictures
    assert all((out / p).is_file() for p in pictures), [p for p in pictures if not (out / p).is_file()]


def test_the_study_the_parent_run_names_is_told_the_truth_about_each_trial(searched):
    search, summary, client = searched
    url = f"sqlite:///{search.folder / 'optuna.db'}"
    assert summary["optuna_storage"] == url and summary["optuna_study"] == search.name
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags[tags.OPTUNA_STORAGE] == url and parent.data.tags[tags.OPTUNA_STUDY] == search.name
    study = optuna.load_study(study_name=search.name, storage=url)
    assert len(study.trials) == 3
    check_study_tells_the_truth(study, client, summary, planned_epochs=2)
    # What the trials saw is recorded on the study itself (a later search can tell whether it searched the same).
    attrs = study.user_attrs
    assert attrs["tune_ct.truthful"] is True and attrs["tune_ct.manifest_hash"] == summary["manifest_hash"]
    assert attrs["tune_ct.limit_per_class"] == 16 and attrs["tune_ct.objectives"] == [["val_macro_f1", "max"]]
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optuna_history.png", "optuna/optuna_parallel_coordinate.png"} <= names


def test_the_console_is_a_compact_table_and_the_summary(searched):
    search, summary, client = searched
    out = search.output
    lines = out.splitlines()
    assert len(lines) <= MAX_LINES_3_TRIALS, f"{len(lines)} lines:\n{out}"
    assert any(re.match(r"trial\s+backbone\s+px\s+lr\s+epoch\s+best\s+state", line) for line in lines), out
    trial_ids = [client.get_run(r).data.tags[tags.TRIAL_ID] for r in summary["child_run_ids"]]
    for trial_id in trial_ids:
        rows = [line for line in lines if line.startswith(trial_id)]
        assert rows and re.search(r"(DONE|STOPPED \(asha\))$", rows[-1]), (trial_id, rows)
    # What the default leaves out: Tune's boxed configs and results, Ray's INFO lines, worker output.
    assert "Configuration for experiment" not in out and "Trial status" not in out
    assert "(actor_trial pid=" not in out and "INFO worker.py" not in out and "TrainingReport(" not in out
    assert "locked test split" in out and f"Best trial {summary['best_trial_id']}" in out
    assert "optuna_pareto_front.png not drawn" not in out  # a single-objective search draws no front


def test_every_trial_that_reported_is_a_logged_model_tied_to_its_run_and_the_val_split(searched):
    """MLflow 3's models: one LoggedModel per trial, linked to its child run, its best epoch's val figures tied to
    the val dataset, its weights left in the Tune storage (MLflow holds only the MLmodel stub); the experiment
    opens in the model-training view; the registered version names the winner's trial model."""
    search, summary, client = searched
    parent = client.get_run(summary["parent_run_id"])
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags[tags.EXPERIMENT_KIND] == tags.MODEL_TRAINING
    val = next(d.dataset for d in parent.inputs.dataset_inputs if d.tags[0].value == "val")
    models = client.search_logged_models([experiment.experiment_id],
                                         filter_string=f"tags.`{tags.SEARCH_PARENT}` = '{parent.info.run_id}'")
    assert len(models) == 3 and {m.source_run_id for m in models} == set(summary["child_run_ids"])
    for model in models:
        run = client.get_run(model.source_run_id)
        assert model.tags[tags.TRIAL_ID] == run.data.tags[tags.TRIAL_ID]
        assert model.params["backbone"] == "baseline_cnn" and model.params["image_size"] == "32"
        best = {m.key: m for m in model.metrics}["best_val_macro_f1"]  # its best epoch's, on the val split
        assert best.dataset_digest == val.digest and best.dataset_name == val.name
        history = [m.value for m in client.get_metric_history(run.info.run_id, "val_macro_f1")]
        assert best.value == pytest.approx(max(history)) and best.step in range(1, len(history) + 1)
        assert Path(model.tags[tags.CHECKPOINT_URI], "model.pt").is_file()  # the weights: in the storage
        assert [a.path for a in client.list_logged_model_artifacts(model.model_id)] == ["MLmodel"]
    ranked = [m["val_macro_f1"] for m in summary["trial_models"]]  # read back through search_logged_models
    assert len(ranked) == 3 and ranked == sorted(ranked, reverse=True)
    version = client.get_model_version(search.register_name, str(summary["registered_version"]))
    registered = client.get_logged_model(version_model_id(version))
    assert registered.tags[tags.TRIAL_MODEL_ID] == summary["best_model_id"]
    winner = client.get_logged_model(summary["best_model_id"])
    assert winner.tags[tags.REGISTERED_AS] == f"{search.register_name}/{summary['registered_version']}"
    assert winner.source_run_id == summary["best_run_id"]
    test = {m.key: m for m in registered.metrics}["test_macro_f1"]
    assert test.value == pytest.approx(summary["test_metrics"]["macro_f1"]) and "/test" in test.dataset_name
    assert f"/#/experiments/{experiment.experiment_id}?workflowType=machine_learning" in search.output
