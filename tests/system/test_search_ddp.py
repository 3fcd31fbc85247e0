"""The README's embedded defaults (local Ray, MLflow on SQLite in ./mlflow.db) with the train runner: one DDP trial of
two Ray Train workers. The actor runner's end-to-end checks read the shared search (test_search_shared.py)."""

from __future__ import annotations

import json
import os
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
    # Every cache a trial read (those holding train images) is free of test images; there must be such caches.
    indexes = [json.loads(p.read_text()) for p in (Path(summary["workdir"]) / "cache").glob("*/index.json")]
    read_by_trials = [i for i in indexes if "train" in i["splits"]]
    assert read_by_trials and all(not set(i["files"]) & test_files for i in read_by_trials)


def check_summary(summary: dict) -> None:
    test = summary["test_metrics"]
    assert test["split"] == "test" and set(test["per_class_recall"]) == set(CLASSES)
    matrix = test["confusion_matrix"]
    assert len(matrix) == 4 and all(len(r) == 4 for r in matrix) and sum(map(sum, matrix)) == test["n"]
    assert abs(test["accuracy"] - sum(matrix[i][i] for i in range(4)) / test["n"]) < 1e-9
    assert summary["best_config"]["backbone"] == "baseline_cnn"
    assert 0.0 <= summary["val_metrics"]["val_macro_f1"] <= 1.0


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
