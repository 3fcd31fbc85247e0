"""Multi-objective search without Ray: the space's objectives and pick rule (validated, named in errors), the
Pareto front of trials at their best epoch, the pick rule, the searcher told best-epoch values, the speed figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tune_ct.train.best import BestTrial
from tune_ct.train.pareto import Point, dominates, pareto_front, pick, search_front
from tune_ct.train.space import Pick, SpaceError, load_space

OBJ = (("val_macro_f1", "max"), ("cpu_ms_per_film", "min"))


def space(tmp_path, search: str):
    path = tmp_path / "space.yaml"
    path.write_text(f"search: {search}\nparams: {{lr: 0.001}}\n")
    return load_space(path)


def point(trial: str, f1: float, ms: float) -> Point:
    return Point({"val_macro_f1": f1, "cpu_ms_per_film": ms}, BestTrial(trial, {}, 1, {}, f"/ckpt/{trial}", None))


def test_objectives_and_pick_are_read_in_order_and_the_first_becomes_the_metric(tmp_path):
    s = space(tmp_path, "{objectives: {val_macro_f1: max, cpu_ms_per_film: min, param_count: min}, "
                        "pick: {best: val_macro_f1, limits: {cpu_ms_per_film: 4}}}")
    assert s.objectives == (("val_macro_f1", "max"), ("cpu_ms_per_film", "min"), ("param_count", "min"))
    assert s.search.multi_objective and s.metric == "val_macro_f1" and s.mode == "max"
    assert s.search.pick == Pick("val_macro_f1", (("cpu_ms_per_film", 4.0),))
    single = space(tmp_path, "{metric: val_loss}")
    assert single.objectives == (("val_loss", "min"),) and not single.search.multi_objective


@pytest.mark.parametrize("search, words", [
    ("{objectives: {val_macro_f1: max}}", "two or more"),
    ("{objectives: {val_macro_f1: max, ms: min}}", "search.objectives.ms: unknown objective"),
    ("{objectives: {val_macro_f1: min, cpu_ms_per_film: min}}", "better when higher; write val_macro_f1: max"),
    ("{objectives: {cpu_ms_per_film: min, val_macro_f1: max}}", "the first objective, and only the first"),
    ("{objectives: {val_macro_f1: max, val_loss: min}}", "got val_loss in place 2"),
    ("{metric: val_loss, objectives: {val_macro_f1: max, param_count: min}}", "disagree"),
    ("{pick: {best: val_macro_f1}}", "declare search.objectives too"),
    ("{objectives: {val_macro_f1: max, param_count: min}, pick: {best: cpu_ms_per_film}}",
     "search.pick.best: 'cpu_ms_per_film' is not one of the objectives"),
    ("{objectives: {val_macro_f1: max, param_count: min}, pick: {best: val_macro_f1, limits: {param_count: .nan}}}",
     "search.pick.limits.param_count: expected a finite number"),
    ("{objectives: {val_macro_f1: max, param_count: min}, pick: {limits: {param_count: 5}}}", "expected {best"),
])
def test_mistakes_in_objectives_and_pick_name_the_key(tmp_path, search, words):
    with pytest.raises(SpaceError, match="space.yaml: search") as err:
        space(tmp_path, search)
    assert words in str(err.value)


def test_front_keeps_exactly_the_points_nothing_dominates():
    pts = [point("a", 0.80, 9.0), point("b", 0.78, 3.0), point("c", 0.75, 4.0), point("d", 0.70, 1.0),
           point("e", 0.80, 9.5), point("f", 0.78, 3.0)]
    front = pareto_front(pts, OBJ)
    # c is beaten by b on both; e by a on speed; b and f tie (both stay); best first on macro-F1.
    assert [p.trial_id for p in front] == ["a", "b", "f", "d"]
    for p in pts:
        assert (p in front) == (not any(dominates(q.values, p.values, OBJ) for q in pts))
    assert not dominates(pts[1].values, pts[5].values, OBJ)


def test_pick_takes_the_best_within_the_limits_or_the_nearest_with_a_flag():
    front = pareto_front([point("a", 0.80, 9.0), point("b", 0.78, 3.0), point("d", 0.70, 1.0)], OBJ)
    assert pick(front, OBJ, None) == (front[0], True)  # no rule: best on the first objective
    chosen, met = pick(front, OBJ, Pick("val_macro_f1", (("cpu_ms_per_film", 5.0),)))
    assert (chosen.trial_id, met) == ("b", True)
    chosen, met = pick(front, OBJ, Pick("cpu_ms_per_film"))
    assert (chosen.trial_id, met) == ("d", True)
    chosen, met = pick(front, OBJ, Pick("val_macro_f1", (("cpu_ms_per_film", 0.5),)))
    assert (chosen.trial_id, met) == ("d", False)  # nothing is that fast: the fastest, and said so
    chosen, met = pick(front, OBJ, Pick("cpu_ms_per_film", (("val_macro_f1", 0.75),)))
    assert (chosen.trial_id, met) == ("b", True)  # a floor on a max objective


def epochs(trial: str, f1: list[float], ms: float | None, kept=None) -> pd.DataFrame:
    n = len(f1)
    df = pd.DataFrame({"trial_id": [trial] * n, "epoch": range(1, n + 1), "val_macro_f1": f1,
                       "param_count": [1000.0] * n,
                       "checkpoint_path": [f"/ckpt/{trial}/{e}" if kept is None or e in kept else None
                                           for e in range(1, n + 1)]})
    if ms is not None:
        df["cpu_ms_per_film"] = ms
    return df


def test_search_front_uses_each_trials_best_kept_epoch_and_counts_trials_without_costs():
    trials = [({"backbone": "x"}, epochs("a", [0.5, 0.9, 0.7], 8.0, kept={1, 3})),
              ({"backbone": "y"}, epochs("b", [0.6, 0.65], 2.0)),
              ({"backbone": "z"}, epochs("c", [0.95], None))]  # errored before its costs were reported
    result = search_front(trials, OBJ, Pick("val_macro_f1", (("cpu_ms_per_film", 3.0),)), lambda p: True,
                          {"a": "run-a"})
    by_id = {p.trial_id: p for p in result.points}
    assert by_id["a"].best.epoch == 3 and by_id["a"].values["val_macro_f1"] == 0.7  # epoch 2's checkpoint is gone
    assert by_id["a"].best.run_id == "run-a" and by_id["a"].best.costs == {"cpu_ms_per_film": 8.0,
                                                                             "param_count": 1000.0}
    assert result.left_out == ["c"] and {p.trial_id for p in result.front} == {"a", "b"}
    assert (result.picked.trial_id, result.met) == ("b", True)
    with pytest.raises(RuntimeError, match="every objective"):
        search_front([trials[2]], OBJ, None, lambda p: True, {})


def test_the_study_is_told_each_trials_best_epoch_not_its_last(tmp_path):
    import optuna
    from ray import tune

    from tune_ct.train.tuner import Sampler, build_searcher

    searcher = build_searcher(Sampler("tpe", 10, "test"), 0, {"lr": tune.loguniform(1e-4, 1e-2)}, objectives=OBJ)
    searcher.set_search_properties(None, None, {"lr": tune.loguniform(1e-4, 1e-2)})
    searcher.suggest("t1")
    for f1 in (0.6, 0.8, 0.7):
        searcher.on_trial_result("t1", {"val_macro_f1": f1, "cpu_ms_per_film": 3.0, "training_iteration": 1})
    searcher.on_trial_complete("t1", {"val_macro_f1": 0.7, "cpu_ms_per_film": 3.0})
    study = searcher._ot_study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE and study.trials[0].values == [0.8, 3.0]


def test_cpu_ms_per_film_times_one_thread_and_leaves_the_model_and_threads_as_they_were():
    from tune_ct.model.inference import cpu_ms_per_film

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 4)).train()
    threads = torch.get_num_threads()
    ms = cpu_ms_per_film(model, np.zeros((4, 32, 32), np.uint8))
    assert 0 < ms < 1000 and math.isfinite(ms)
    assert model.training and torch.get_num_threads() == threads


def test_a_multi_objective_space_runs_without_asha_and_refuses_it_by_name(tmp_path):
    from tune_ct.search.plan import resolve_scheduler

    multi = space(tmp_path, "{objectives: {val_macro_f1: max, param_count: min}}")
    assert resolve_scheduler(None, multi) == resolve_scheduler("none", multi) == "none"
    with pytest.raises(SpaceError, match="space.yaml: search.objectives .* drop --scheduler asha"):
        resolve_scheduler("asha", multi)
    single = space(tmp_path, "{metric: val_loss}")
    assert resolve_scheduler(None, single) == "asha" and resolve_scheduler("none", single) == "none"
