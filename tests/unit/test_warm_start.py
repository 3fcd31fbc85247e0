"""--warm-start: a new study is seeded with the finished and pruned trials of earlier studies in the same storage
that searched the same data for the same objectives, rebuilt with the new space's distributions; the rest is
skipped and counted, and studies written before trials were told the truth are not imported."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tune_ct.track.study import TRUTHFUL_ATTR, StudyError, create_search_study
from tune_ct.track.warm_start import FIXED_ATTR, IMPORTED_FROM, warm_start

IDENTITY = {"tune_ct.manifest_hash": "m1", "tune_ct.limit_per_class": None, "tune_ct.seed": 0,
            "tune_ct.objectives": [["val_macro_f1", "max"]], "tune_ct.select_on_hash": None}
OLD = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "batch_size": CategoricalDistribution((8, 16, 32))}


def earlier(url: str, name: str, attrs: dict, trials: list[tuple[dict, TrialState, float | None]]) -> None:
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for params, state, value in trials:
        study.add_trial(create_trial(params=params, distributions=OLD, state=state, intermediate_values={1: 0.3},
                                     **({"value": value} if state == TrialState.COMPLETE else {})))


def test_compatible_trials_come_in_and_the_rest_is_counted(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    earlier(url, "night1", {TRUTHFUL_ATTR: True, FIXED_ATTR: {"epochs": 4}, **IDENTITY}, [
        ({"lr": 1e-3, "batch_size": 16}, TrialState.COMPLETE, 0.7),
        ({"lr": 2e-3, "batch_size": 8}, TrialState.PRUNED, None),
        ({"lr": 5e-2, "batch_size": 16}, TrialState.COMPLETE, 0.4),  # outside the new lr range
        ({"lr": 1e-3, "batch_size": 32}, TrialState.COMPLETE, 0.6)])  # 32 is not a new choice
    earlier(url, "old", {**IDENTITY}, [({"lr": 1e-3, "batch_size": 16}, TrialState.COMPLETE, 0.9)])  # not truthful
    earlier(url, "other-data", {TRUTHFUL_ATTR: True, **IDENTITY, "tune_ct.manifest_hash": "m2"},
            [({"lr": 1e-3, "batch_size": 16}, TrialState.COMPLETE, 0.8)])
    new = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "batch_size": CategoricalDistribution((8, 16))}
    create_search_study(url, "night2", (("val_macro_f1", "max"),), {**IDENTITY})
    warm = warm_start(url, "night2", "auto", IDENTITY, new, {"epochs": 4})
    assert (warm.studies, warm.imported, warm.skipped) == (["night1"], 2, 2)
    assert set(warm.refused) == {"old", "other-data"} and "told the truth" in warm.refused["old"]
    trials = optuna.load_study(study_name="night2", storage=url).trials
    assert [(t.state, t.value, t.params["lr"], t.user_attrs[IMPORTED_FROM]) for t in trials] == [
        (TrialState.COMPLETE, 0.7, 1e-3, "night1"), (TrialState.PRUNED, None, 2e-3, "night1")]
    assert trials[0].distributions == new and trials[1].intermediate_values == {1: 0.3}


def test_other_fixed_settings_are_not_the_same_configuration(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    earlier(url, "four-epochs", {TRUTHFUL_ATTR: True, FIXED_ATTR: {"epochs": 4}, **IDENTITY},
            [({"lr": 1e-3, "batch_size": 16}, TrialState.COMPLETE, 0.7)])
    create_search_study(url, "eight-epochs", (("val_macro_f1", "max"),), IDENTITY)
    warm = warm_start(url, "eight-epochs", "auto", IDENTITY, OLD, {"epochs": 8})
    assert (warm.imported, warm.skipped) == (0, 1)


def test_a_named_study_that_does_not_fit_is_refused_by_name(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    earlier(url, "old", IDENTITY, [])
    create_search_study(url, "new", (("val_macro_f1", "max"),), IDENTITY)
    with pytest.raises(StudyError, match="--warm-start old: written before"):
        warm_start(url, "new", "old", IDENTITY, OLD, {})
    with pytest.raises(StudyError, match="no study nope"):
        warm_start(url, "new", "nope", IDENTITY, OLD, {})


def test_a_pruned_trial_keeps_the_value_optuna_gave_it(tmp_path):
    """Optuna records a pruned trial's last intermediate value as its value; the imported copy keeps it."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="night1", storage=url, direction="maximize")
    for key, value in {TRUTHFUL_ATTR: True, FIXED_ATTR: {}, **IDENTITY}.items():
        study.set_user_attr(key, value)
    study.add_trial(create_trial(params={"lr": 1e-3, "batch_size": 16}, distributions=OLD, state=TrialState.PRUNED,
                                 value=0.31, intermediate_values={1: 0.31}))
    create_search_study(url, "night2", (("val_macro_f1", "max"),), {**IDENTITY})
    assert warm_start(url, "night2", "night1", IDENTITY, OLD, {}).imported == 1
    copy = optuna.load_study(study_name="night2", storage=url).trials[0]
    assert (copy.state, copy.value, copy.intermediate_values) == (TrialState.PRUNED, 0.31, {1: 0.31})
