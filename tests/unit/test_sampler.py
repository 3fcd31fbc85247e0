"""search.sampler: auto picks GP only where every trial runs to its end (GPSampler learns from COMPLETE trials
alone) on a small budget of one objective, TPE elsewhere; the random start-up scales with the budget."""

from __future__ import annotations

import optuna
import pytest

from tune_ct.train.tuner import GP_MAX_TRIALS, resolve_sampler


@pytest.mark.parametrize("scheduler, trials, multi, kind", [
    ("none", 16, False, "gp"), ("none", GP_MAX_TRIALS, False, "gp"), ("none", GP_MAX_TRIALS + 1, False, "tpe"),
    ("asha", 16, False, "tpe"),  # under ASHA most trials end PRUNED: GP would never leave its start-up
    ("none", 12, True, "tpe"),
])
def test_auto_takes_the_scheduler_and_the_budget_into_account(scheduler, trials, multi, kind):
    sampler = resolve_sampler("auto", scheduler, trials, multi)
    assert sampler.kind == kind and sampler.why.startswith("auto")


@pytest.mark.parametrize("trials, startup", [(4, 3), (16, 4), (24, 6), (48, 10), (200, 10)])
def test_the_random_start_up_is_a_quarter_of_the_budget_within_3_to_10(trials, startup):
    assert resolve_sampler("tpe", "asha", trials, False).n_startup_trials == startup


def test_an_asked_sampler_is_built_as_asked_and_seeded():
    tpe = resolve_sampler("tpe", "none", 16, False).build(seed=3)
    assert isinstance(tpe, optuna.samplers.TPESampler) and tpe._n_startup_trials == 4
    assert isinstance(resolve_sampler("gp", "asha", 16, False).build(0), optuna.samplers.GPSampler)
    assert isinstance(resolve_sampler("random", "asha", 16, False).build(0), optuna.samplers.RandomSampler)
    assert resolve_sampler("gp", "asha", 16, False).why == "search.sampler gp"


def test_the_space_can_fix_the_start_up(tmp_path):
    from tune_ct.train.space import SpaceError, load_space

    path = tmp_path / "space.yaml"
    path.write_text("search: {startup_trials: 10}\nparams: {epochs: 2}\n")
    startup = load_space(path).search.startup_trials
    assert startup == 10 and resolve_sampler("auto", "asha", 16, False, startup).n_startup_trials == 10
    path.write_text("search: {startup_trials: auto}\nparams: {epochs: 2}\n")
    assert resolve_sampler("auto", "asha", 16, False, load_space(path).search.startup_trials).n_startup_trials == 4
    path.write_text("search: {startup_trials: 0}\nparams: {epochs: 2}\n")
    with pytest.raises(SpaceError, match="search.startup_trials: expected auto or a whole number >= 1, got 0"):
        load_space(path)
