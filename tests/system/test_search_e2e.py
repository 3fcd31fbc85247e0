"""End to end: a real Ray Tune + Optuna search of Ray Train trials on real X-rays, recorded in real MLflow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from tune_ct.data.subsets import read_subset
from tune_ct.data.files import CLASSES
from tune_ct.data.manifest import load

# System tests: real searches (local Ray, Ray Train trials, MLflow).
from helpers.search_cli import REPO
TINY = REPO / "tests/spaces/tiny.yaml"


def search(tmp_path: Path, data: Path, *extra: str, space: Path = TINY, tracking_env: str | None = None) -> dict:
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if tracking_env:
        env["MLFLOW_TRACKING_URI"] = tracking_env
    proc = subprocess.run(
        [sys.executable, "-m", "tune_ct.search", "--data", str(data), "--space", str(space), "--limit-per-class", "16",
         "--experiment", "e2e", "--summary", str(summary), *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "locked test split" in proc.stdout
    # Ray Train's per-report dicts stay in the session logs (the DDP test runs the train runner).
    assert "TrainingReport(" not in proc.stdout + proc.stderr
    return json.loads(summary.read_text())


def check_tracking(client: MlflowClient, summary: dict, trials: int) -> None:
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["tune_ct.manifest_hash"] == summary["manifest_hash"]
    assert parent.data.tags["tune_ct.space_file"].endswith(".yaml") and parent.data.tags["tune_ct.code_version"]
    assert 0.0 <= parent.data.metrics["test_macro_f1"] <= 1.0
    # The data as MLflow dataset inputs (digest = the manifest hash); the test split only on the parent run.
    contexts = {d.tags[0].value: d.dataset for d in parent.inputs.dataset_inputs}
    assert set(contexts) == {"train", "val", "test"}
    assert {d.digest for d in contexts.values()} == {summary["manifest_hash"]}
    assert json.loads(contexts["test"].profile)["num_films"] == summary["test_metrics"]["n"]
    # The description MLflow's UI shows first: the winner's figures with their splits named.
    note = parent.data.tags["mlflow.note.content"]
    assert f"best trial {summary['best_trial_id']}" in note and "locked test split" in note
    assert f"| macro-F1 | {summary['val_metrics']['val_macro_f1']:.3f} | {summary['test_metrics']['macro_f1']:.3f} |" in note

    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == trials == len(summary["child_run_ids"])  # exactly one child run per trial
    assert {c.info.run_id for c in children} == set(summary["child_run_ids"])
    for child in children:
        assert child.info.status == "FINISHED"  # ASHA-stopped trials are closed too, never left RUNNING
        epochs_run = int(child.data.tags["epochs_run"])
        history = client.get_metric_history(child.info.run_id, "val_macro_f1")
        assert sorted(m.step for m in history) == list(range(1, epochs_run + 1))  # one point per epoch, step = epoch
        assert {"lr", "backbone", "batch_size"} <= set(child.data.params)
        # Where the trial's time went, per epoch.
        split = {"time_data_s", "time_compute_s", "time_val_s", "time_checkpoint_s", "time_report_s"}
        assert split <= set(child.data.metrics), set(child.data.metrics)
        assert child.data.metrics["time_compute_s"] > 0 and child.data.metrics["train_images_per_s"] > 0
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "val_confusion_matrix.png" in names
        assert sorted(d.tags[0].value for d in child.inputs.dataset_inputs) == ["train", "val"]  # never test
        # System metrics sampled in the trial's process, in MLflow's System metrics tab (system/ names).
        assert client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage"), child.data.metrics


def check_test_split_never_reached_a_trial(tmp_path: Path, summary: dict) -> None:
    manifest = load(Path(summary["manifest"]))
    test_files = {e.file for e in manifest.entries if e.split == "test"}
    trainval = {f[0] for f in read_subset(Path(summary["trainval_subset"]))["files"]}
    assert trainval and test_files and not (trainval & test_files)
    # Every cache a trial read (those holding train images) is free of test images.
    for index in (tmp_path / ".tune_ct" / "cache").glob("*/index.json"):
        cached = json.loads(index.read_text())
        if "train" in cached["splits"]:
            assert not set(cached["files"]) & test_files


def check_summary(summary: dict) -> None:
    test = summary["test_metrics"]
    assert test["split"] == "test" and set(test["per_class_recall"]) == set(CLASSES)
    matrix = test["confusion_matrix"]
    assert len(matrix) == 4 and all(len(r) == 4 for r in matrix) and sum(map(sum, matrix)) == test["n"]
    assert abs(test["accuracy"] - sum(matrix[i][i] for i in range(4)) / test["n"]) < 1e-9
    assert summary["best_config"]["backbone"] == "baseline_cnn"
    assert 0.0 <= summary["val_metrics"]["val_macro_f1"] <= 1.0


def check_registered_and_report(tmp_path: Path, summary: dict, tracking_uri: str, name: str) -> None:
    """The winner is a new registered version, and the report is built from what the search logged."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)  # registered models: the same store
    version = client.get_model_version(name, str(summary["registered_version"]))
    assert version.run_id == summary["parent_run_id"]
    test = summary["test_metrics"]
    assert f"Locked test split (n={test['n']})" in version.description
    assert f"macro-F1 {test['macro_f1']:.3f}" in version.description
    # The Optuna study's plots, drawn at the end of the search, on the parent run.
    optuna_plots = {a.path for a in client.list_artifacts(summary["parent_run_id"], "optuna")}
    assert "optuna/optuna_history.png" in optuna_plots and summary["optuna_study"]
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "tune_ct.report", "--experiment", "e2e", "--out", str(out),
                           "--tracking-uri", tracking_uri], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "report.md").read_text()
    # The figures come from this search's locked-test evaluation, and every picture it links exists.
    assert f"Best model on the locked test split (n={test['n']})" in text
    assert f"| macro_f1 | {test['macro_f1']:.3f} |" in text
    assert "Wehbe" in text and "Lung focus" in text
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "curves.png" in pictures and "evaluation/test_confusion_matrix.png" in pictures
    assert all((out / p).is_file() for p in pictures), [p for p in pictures if not (out / p).is_file()]


def test_search_with_tracking_server_two_concurrent_trials(tmp_path, data_dir, mlflow_server):
    """The server comes from MLFLOW_TRACKING_URI alone (no --tracking-uri): runs, the registered model and the
    report all go there, and nothing is logged into ./mlflow.db."""
    summary = search(tmp_path, data_dir, "--max-concurrent", "2", "--register-name", "e2e-model",
                     tracking_env=mlflow_server)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    check_summary(summary)
    check_tracking(MlflowClient(mlflow_server), summary, trials=3)
    check_test_split_never_reached_a_trial(tmp_path, summary)
    check_registered_and_report(tmp_path, summary, mlflow_server, "e2e-model")


def test_search_embedded_defaults_one_ddp_trial_at_a_time(tmp_path, data_dir):
    """The README's default: local Ray, MLflow on SQLite in ./mlflow.db with artifacts in ./mlartifacts; here with
    two Ray Train workers per trial (DDP), which on 2 CPUs also means one trial at a time."""
    space = yaml.safe_load(TINY.read_text())
    space["search"].update(workers_per_trial=2, cpus_per_worker=1)
    # Every value fixed (a recipe, not a search): OptunaSearch refuses such a space, so the search runs it as is.
    space["params"].update(lr=3.0e-3, weight_decay=1.0e-4, batch_size=8, aug_rotation_deg=4.0, aug_crop_scale_min=0.9)
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(space))
    # One trial: a second would be the same fixed recipe again (the two-trial paths are the other tests').
    summary = search(tmp_path, data_dir, "--max-concurrent", "1", "--num-samples", "1", space=tmp_path / "ddp.yaml")
    assert summary["best_config"]["lr"] == 3.0e-3 and summary["best_config"]["batch_size"] == 8
    assert summary["optuna_study"] is None and not (tmp_path / "optuna.db").exists()  # nothing to sample: no study
    assert (tmp_path / "mlflow.db").is_file() and any((tmp_path / "mlartifacts").rglob("*.png"))
    check_summary(summary)
    check_tracking(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), summary, trials=1)
    check_test_split_never_reached_a_trial(tmp_path, summary)
