"""The search's Optuna study on disk: one study per search, one Optuna trial per Tune trial, and a resumed
searcher that agrees with the study it finds there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from test_console import assert_compact_console

from tune_ct.track.study import STORAGE_TAG, STUDY_TAG, StudyError, check_study, resolve_storage_url
from tune_ct.train.tuner import build_searcher

from helpers.search_cli import REPO
TINY = REPO / "tests/spaces/tiny.yaml"
SPACE = {"lr": tune.loguniform(1e-3, 1e-2), "batch_size": tune.choice([8, 16])}


def test_default_storage_is_an_absolute_sqlite_file_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_storage_url(None) == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert resolve_storage_url("sqlite:///sub/o.db") == f"sqlite:///{tmp_path / 'sub/o.db'}"
    assert resolve_storage_url("sqlite:////abs/o.db") == "sqlite:////abs/o.db"
    assert resolve_storage_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def test_a_new_search_refuses_a_study_name_already_used_and_a_storage_that_does_not_open(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    check_study(url, "night1", resume=False)  # creates the tables, no study yet: fine
    optuna.create_study(study_name="night1", storage=url).ask()
    with pytest.raises(StudyError, match=r"study 'night1' already holds 1 trial.*--resume --name night1"):
        check_study(url, "night1", resume=False)
    check_study(url, "night1", resume=True)
    with pytest.raises(StudyError, match="cannot open the Optuna storage"):
        check_study(f"sqlite:///{tmp_path / 'missing-dir' / 'o.db'}", "x", resume=False)


def searcher(url: str):
    search = build_searcher("tpe", 0, SPACE, study_name="s1", study_storage=url)
    search.set_search_properties("val_macro_f1", "max", SPACE)
    return search


def test_a_restored_searcher_agrees_with_the_study_on_disk(tmp_path):
    """The driver died after the snapshot: one Optuna trial was asked for (RUNNING on disk, unknown to Tune) and
    one the snapshot holds as running was already told COMPLETE. After restore the first is FAIL and the second is
    not told again."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = searcher(url)
    assert first.suggest("t1") and first.suggest("t2")
    snapshot = tmp_path / "searcher-state.pkl"
    first.save(str(snapshot))
    first.on_trial_complete("t1", {"val_macro_f1": 0.5, "training_iteration": 2})  # after the snapshot
    first.suggest("t3")  # asked for as the driver died: Tune never recorded t3

    restored = searcher(url)
    restored.restore(str(snapshot))
    # Tune replays t1's last epoch and end: Optuna refuses reports to a finished trial (Ray's OptunaSearch would
    # raise into the Tune loop here), so the restored searcher must know t1 has finished.
    restored.on_trial_result("t1", {"val_macro_f1": 0.9, "training_iteration": 2})
    restored.on_trial_complete("t1", {"val_macro_f1": 0.9, "training_iteration": 2})
    restored.on_trial_complete("t2", {"val_macro_f1": 0.4, "training_iteration": 1})
    trials = optuna.load_study(study_name="s1", storage=url).trials
    assert [(t.number, t.state, t.value) for t in trials] == [
        (0, TrialState.COMPLETE, 0.5), (1, TrialState.COMPLETE, 0.4), (2, TrialState.FAIL, None)]


def test_search_keeps_one_optuna_trial_per_tune_trial_in_the_study_it_names(tmp_path, data_dir):
    summary_file = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_AIR_NEW_OUTPUT")}
    proc = subprocess.run(
        [sys.executable, "-m", "tune_ct.search", "--data", str(data_dir), "--space", str(TINY), "--limit-per-class",
         "16", "--num-samples", "3", "--name", "study-e2e", "--summary", str(summary_file)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert summary["optuna_storage"] == url and summary["optuna_study"] == "study-e2e"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert_compact_console(proc.stdout + proc.stderr, summary, client)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags[STORAGE_TAG] == url and parent.data.tags[STUDY_TAG] == "study-e2e"
    study = optuna.load_study(study_name="study-e2e", storage=url)
    children = [client.get_run(r) for r in summary["child_run_ids"]]
    assert len(study.trials) == len(children) == summary["trials"] == 3
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    # Optuna's value is the trial's last reported val_macro_f1 (MLflow's latest value of the metric, not its best);
    # its intermediate values are the epochs before (Tune hands the final result to the searcher as the end).
    by_lr = {float(c.data.params["lr"]): c for c in children}
    for trial in study.trials:
        child = by_lr[trial.params["lr"]]
        per_epoch = [m.value for m in sorted(client.get_metric_history(child.info.run_id, "val_macro_f1"),
                                             key=lambda m: m.step)]
        assert trial.value == pytest.approx(child.data.metrics["val_macro_f1"]) == pytest.approx(per_epoch[-1])
        reported = [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
        assert len(per_epoch) - 1 <= len(reported) <= len(per_epoch)
        assert reported == pytest.approx(per_epoch[:len(reported)])
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optuna_history.png", "optuna/optuna_parallel_coordinate.png"} <= names

    out = tmp_path / "report"
    report = subprocess.run([sys.executable, "-m", "tune_ct.report", "--experiment", "tune_ct", "--out", str(out),
                             "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"Search history (Optuna, study `study-e2e` in `{url}`)" in (out / "report.md").read_text()


@pytest.mark.timeout(900)
def test_a_killed_and_resumed_search_counts_every_trial_once_in_its_study(tmp_path, data_dir):
    """The driver is killed mid-search and the search resumed: the study on disk ends with one finished Optuna
    trial per Tune trial (a trial started as the driver died is closed FAIL, never left RUNNING or counted)."""
    import signal
    import time

    from conftest import make_small_dataset
    from mlflow.tracking import MlflowClient
    from test_team_resilience import kill_group, space_with_runner

    data = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=24)
    space = space_with_runner(tmp_path, "actor")  # 8 epochs at 64 px: time to kill the driver mid-search
    command = [sys.executable, "-m", "tune_ct.search", "--data", str(data), "--space", str(space),
               "--limit-per-class", "16", "--name", "night", "--num-samples", "3", "--max-concurrent", "1",
               "--summary", str(tmp_path / "summary.json")]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 env=env)
    try:
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline and first.poll() is None:  # one trial finished, the next one running
            time.sleep(0.2)  # a quiet machine runs a trial in ~8 s: look often enough to catch the next one running
            if (tmp_path / "optuna.db").exists():
                try:
                    states = [t.state for t in optuna.load_study(study_name="night", storage=url).trials]
                except Exception:  # noqa: BLE001 - no study yet (KeyError), or the search is writing (locked)
                    continue
                if TrialState.COMPLETE in states and TrialState.RUNNING in states:
                    break
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.kill(first.pid, signal.SIGKILL)
    finally:
        kill_group(first)
    resumed = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    study = optuna.load_study(study_name="night", storage=url)
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == summary["trials"] == 3, [(t.number, t.state) for t in study.trials]
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    values = sorted(client.get_run(r).data.metrics["val_macro_f1"] for r in summary["child_run_ids"])
    assert sorted(t.value for t in finished) == pytest.approx(values)


def test_trials_the_time_budget_stopped_are_told_their_values_or_failed():
    from tune_ct.track.study import finish_running

    study = optuna.create_study(direction="maximize")
    trials = []
    for lr in (1e-3, 2e-3, 3e-3):
        study.enqueue_trial({"lr": lr})
        trials.append(study.ask())
        trials[-1].suggest_float("lr", 1e-4, 1e-2, log=True)
    study.tell(trials[0], 0.5)
    # Tune's view at the end: the trial with lr 2e-3 reported 0.4 so far, the one with 3e-3 reported nothing.
    ended = [({"lr": 1e-3, "batch_size": 8}, 0.5), ({"lr": 2e-3, "batch_size": 8}, 0.4), ({"lr": 3e-3}, None)]
    assert finish_running(study, ended) == [1, 2]
    assert [(t.state, t.value) for t in study.trials] == [
        (TrialState.COMPLETE, 0.5), (TrialState.COMPLETE, 0.4), (TrialState.FAIL, None)]
