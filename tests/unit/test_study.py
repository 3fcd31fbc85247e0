"""The search's Optuna study on disk: its storage, a refused second search under one name, a resumed searcher that
agrees with the study it finds there, and trials the time budget stopped. (A real search's study: the system
tests, test_search_shared.py and test_stop_and_resume.py.)"""

from __future__ import annotations


import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from tune_ct.track.study import StudyError, check_study, resolve_storage_url
from tune_ct.train.tuner import build_searcher

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
