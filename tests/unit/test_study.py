"""The search's Optuna study on disk: its storage, a refused second search under one name, a resumed searcher that
agrees with the study it finds there, and trials the time budget stopped. (A real search's study: the system
tests, test_search_shared.py and test_stop_and_resume.py.)"""

from __future__ import annotations


import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from tune_ct.track.study import StudyError, check_study, resolve_storage_url
from tune_ct.train.tuner import Sampler, build_searcher

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
    search = build_searcher(Sampler("tpe", 10, "test"), 0, SPACE, study_name="s1", study_storage=url)
    search.set_search_properties("val_macro_f1", "max", SPACE)
    return search


def report(search, trial_id: str, *values: float, planned: int, start: int = 1) -> None:
    """Epochs `start`, start+1, ... of a trial, as the training loop reports them (Tune adds no config)."""
    for epoch, value in enumerate(values, start):
        search.on_trial_result(trial_id, {"val_macro_f1": value, "epoch": epoch, "training_iteration": epoch,
                                          "epochs_planned": planned})


def test_a_restored_searcher_agrees_with_the_study_on_disk(tmp_path):
    """The driver died after the snapshot: one Optuna trial was asked for (RUNNING on disk, unknown to Tune) and
    one the snapshot holds as running was already told. After restore the first is FAIL and the second is not told
    again."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = searcher(url)
    assert first.suggest("t1") and first.suggest("t2")
    snapshot = tmp_path / "searcher-state.pkl"
    first.save(str(snapshot))
    report(first, "t1", 0.4, 0.5, planned=2)
    first.on_trial_complete("t1", {"val_macro_f1": 0.5})  # after the snapshot
    first.suggest("t3")  # asked for as the driver died: Tune never recorded t3

    restored = searcher(url)
    restored.restore(str(snapshot))
    # Tune replays t1's last epoch and end: Optuna refuses reports to a finished trial (Ray's OptunaSearch would
    # raise into the Tune loop here), so the restored searcher must know t1 has finished.
    report(restored, "t1", 0.9, planned=2, start=2)
    restored.on_trial_complete("t1", {"val_macro_f1": 0.9})
    report(restored, "t2", 0.4, planned=2)
    restored.on_trial_complete("t2", {"val_macro_f1": 0.4})  # stopped after 1 of 2 epochs (ASHA)
    trials = optuna.load_study(study_name="s1", storage=url).trials
    assert [(t.number, t.state, t.value) for t in trials] == [
        (0, TrialState.COMPLETE, 0.5), (1, TrialState.PRUNED, 0.4), (2, TrialState.FAIL, None)]


def test_the_study_is_told_the_truth_about_each_trial(tmp_path):
    """Every epoch an intermediate value at step = epoch; a finished trial COMPLETE with its best epoch's value (the
    epoch the search picks, not the last); a trial stopped early PRUNED (TPE then ranks it by how far it got); an
    errored one FAIL; a retried trial whose training_iteration restarts keeps its epochs as steps."""
    search = searcher(f"sqlite:///{tmp_path / 'optuna.db'}")
    for t in ("done", "asha", "error", "retried"):
        search.suggest(t)
    report(search, "done", 0.3, 0.6, 0.5, planned=3)
    search.on_trial_complete("done", {"val_macro_f1": 0.5})
    report(search, "asha", 0.2, planned=3)
    search.on_trial_complete("asha", {"val_macro_f1": 0.2})
    report(search, "error", 0.1, planned=3)
    search.on_trial_complete("error", None, error=True)
    report(search, "retried", 0.3, planned=2)
    search.on_trial_result("retried", {"val_macro_f1": 0.4, "epoch": 2, "training_iteration": 1,
                                       "epochs_planned": 2})  # Tune's iteration restarted after a retry
    search.on_trial_complete("retried", {"val_macro_f1": 0.4})
    trials = {t.number: t for t in search._ot_study.trials}
    assert (trials[0].state, trials[0].value, trials[0].intermediate_values) == (
        TrialState.COMPLETE, 0.6, {1: 0.3, 2: 0.6, 3: 0.5})
    # Optuna gives a pruned trial its last intermediate value; TPE ranks it after the finished ones.
    assert (trials[1].state, trials[1].value, trials[1].intermediate_values) == (TrialState.PRUNED, 0.2, {1: 0.2})
    assert trials[2].state == TrialState.FAIL
    assert (trials[3].state, trials[3].value, trials[3].intermediate_values) == (
        TrialState.COMPLETE, 0.4, {1: 0.3, 2: 0.4})


def test_trials_the_time_budget_stopped_are_told_how_far_they_got():
    from tune_ct.track.study import finish_running

    study = optuna.create_study(direction="maximize")
    trials = []
    for lr in (1e-3, 2e-3, 3e-3, 4e-3):
        study.enqueue_trial({"lr": lr})
        trials.append(study.ask())
        trials[-1].suggest_float("lr", 1e-4, 1e-2, log=True)
    study.tell(trials[0], 0.5)
    # Tune's view at the end: 2e-3 ran 1 of 4 epochs (best 0.4), 3e-3 reported nothing, 4e-3 had just finished.
    ended = [({"lr": 1e-3, "epochs": 4}, {"val_macro_f1": 0.5}, 4), ({"lr": 2e-3, "epochs": 4}, {"val_macro_f1": 0.4}, 1),
             ({"lr": 3e-3, "epochs": 4}, None, 0), ({"lr": 4e-3, "epochs": 4}, {"val_macro_f1": 0.7}, 4)]
    assert finish_running(study, ended, ["val_macro_f1"]) == [1, 2, 3]
    assert [(t.state, t.value) for t in study.trials] == [
        (TrialState.COMPLETE, 0.5), (TrialState.PRUNED, None), (TrialState.FAIL, None), (TrialState.COMPLETE, 0.7)]


def test_the_result_asha_stops_a_trial_on_comes_with_its_completion(tmp_path):
    """Tune hands the result the scheduler stopped a trial on (and a trial's final one) to on_trial_complete, not
    to on_trial_result: it still counts as the epoch it is, once."""
    search = searcher(f"sqlite:///{tmp_path / 'optuna.db'}")
    search.suggest("stopped")
    search.suggest("done")
    search.on_trial_complete("stopped", {"val_macro_f1": 0.1, "epoch": 1, "epochs_planned": 2})
    report(search, "done", 0.3, planned=2)
    search.on_trial_complete("done", {"val_macro_f1": 0.5, "epoch": 2, "epochs_planned": 2})
    stopped, done = search._ot_study.trials
    assert (stopped.state, stopped.intermediate_values) == (TrialState.PRUNED, {1: 0.1})
    assert (done.state, done.value, done.intermediate_values) == (TrialState.COMPLETE, 0.5, {1: 0.3, 2: 0.5})
