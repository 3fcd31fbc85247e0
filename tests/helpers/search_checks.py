"""What every finished search must show, checked the same way for each runner: the summary names its splits, the
parent and child runs on MLflow, and the test split never reached a trial."""

from __future__ import annotations

import json
from pathlib import Path

from tune_ct.data.files import CLASSES
from tune_ct.data.manifest import load
from tune_ct.data.subsets import read_subset
from tune_ct.track import tags


def check_summary(summary: dict) -> None:
    test = summary["test_metrics"]
    assert test["split"] == "test" and set(test["per_class_recall"]) == set(CLASSES)
    matrix = test["confusion_matrix"]
    assert len(matrix) == 4 and all(len(r) == 4 for r in matrix) and sum(map(sum, matrix)) == test["n"]
    assert abs(test["accuracy"] - sum(matrix[i][i] for i in range(4)) / test["n"]) < 1e-9
    assert summary["best_config"]["backbone"] == "baseline_cnn"
    assert 0.0 <= summary["val_metrics"]["val_macro_f1"] <= 1.0
    assert summary["selection"] == {"metric": "val_macro_f1", "mode": "max", "split": "val",
                                    "value": summary["val_metrics"]["val_macro_f1"]}
    assert summary["test_report"]["macro_f1"] == test["macro_f1"] and summary["test_report"]["ci95"]


def check_parent_run(client, summary: dict) -> None:
    """Tags, the winner's figures, the splits as dataset inputs, and the description MLflow shows first."""
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags[tags.ROLE] == tags.ROLE_SEARCH
    assert parent.data.tags[tags.MANIFEST_HASH] == summary["manifest_hash"]
    assert parent.data.tags[tags.SPACE_FILE].endswith(".yaml") and parent.data.tags[tags.CODE_VERSION]
    assert abs(parent.data.metrics["test_macro_f1"] - summary["test_metrics"]["macro_f1"]) < 1e-9
    # The data as MLflow dataset inputs (digest = the manifest hash); the test split only on the parent run.
    contexts = {d.tags[0].value: d.dataset for d in parent.inputs.dataset_inputs}
    assert set(contexts) == {"train", "val", "test"}
    assert {d.digest for d in contexts.values()} == {summary["manifest_hash"]}
    assert json.loads(contexts["test"].profile)["num_films"] == summary["test_metrics"]["n"]
    note = parent.data.tags["mlflow.note.content"]
    assert f"best trial {summary['best_trial_id']}" in note and "locked test split" in note
    assert (f"| macro-F1 | {summary['val_metrics']['val_macro_f1']:.3f} | "
            f"{summary['test_metrics']['macro_f1']:.3f} |") in note


def check_child_runs(client, summary: dict, trials: int) -> None:
    """One FINISHED child run per trial, one point per epoch (step = epoch), its timings, confusion matrix,
    train/val inputs (never test) and system metrics."""
    parent = client.get_run(summary["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == trials == summary["trials"] == len(summary["child_run_ids"])
    assert {c.info.run_id for c in children} == set(summary["child_run_ids"])
    assert summary["best_run_id"] in summary["child_run_ids"]
    for child in children:
        assert child.info.status == "FINISHED"  # ASHA-stopped trials are closed too, never left RUNNING
        epochs_run = int(child.data.tags[tags.EPOCHS_RUN])
        history = client.get_metric_history(child.info.run_id, "val_macro_f1")
        assert sorted(m.step for m in history) == list(range(1, epochs_run + 1))
        assert {"lr", "backbone", "batch_size"} <= set(child.data.params)
        split = {"time_data_s", "time_compute_s", "time_val_s", "time_checkpoint_s", "time_report_s"}
        assert split <= set(child.data.metrics), set(child.data.metrics)
        assert child.data.metrics["time_compute_s"] > 0 and child.data.metrics["train_images_per_s"] > 0
        assert "val_confusion_matrix.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
        assert sorted(d.tags[0].value for d in child.inputs.dataset_inputs) == ["train", "val"]
        assert client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage"), child.data.metrics


def check_test_split_never_reached_a_trial(summary: dict) -> None:
    manifest = load(Path(summary["manifest"]))
    test_files = {e.file for e in manifest.entries if e.split == "test"}
    trainval = {f[0] for f in read_subset(Path(summary["trainval_subset"]))["files"]}
    assert trainval and test_files and not (trainval & test_files)
    # Every cache a trial read (those holding train films) is free of test films. The work folder is the one the
    # summary names, and the trials' caches must be found there: finding none would prove nothing.
    indexes = [json.loads(p.read_text()) for p in (Path(summary["workdir"]) / "cache").glob("*/index.json")]
    read_by_trials = [i for i in indexes if "train" in i["splits"]]
    assert read_by_trials, f"no trial cache under {summary['workdir']}"
    assert all(not set(i["files"]) & test_files for i in read_by_trials)
    assert any(set(i["files"]) == trainval for i in read_by_trials)  # the very list the trials were given


def check_study_tells_the_truth(study, client, summary: dict, planned_epochs: int) -> None:
    """One Optuna trial per Tune trial (matched by the sampled lr), none left RUNNING: every epoch an intermediate
    value at step = epoch, equal to the child run's val_macro_f1 history; a trial that ran all its epochs COMPLETE
    with its best epoch's value, one stopped early PRUNED."""
    from optuna.trial import TrialState

    assert not [t.number for t in study.trials if t.state == TrialState.RUNNING]
    told = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(told) == summary["trials"], [(t.number, t.state) for t in study.trials]
    by_lr = {round(t.params["lr"], 12): t for t in told}
    for run_id in summary["child_run_ids"]:
        run = client.get_run(run_id)
        trial = by_lr[round(float(run.data.params["lr"]), 12)]
        history = {m.step: m.value for m in client.get_metric_history(run_id, "val_macro_f1")}
        assert trial.intermediate_values == history, (trial.number, trial.intermediate_values, history)
        if int(run.data.tags[tags.EPOCHS_RUN]) >= planned_epochs:
            assert trial.state == TrialState.COMPLETE and trial.value == max(history.values())
        else:
            assert trial.state == TrialState.PRUNED, (trial.number, trial.state, run.data.tags[tags.EPOCHS_RUN])
