"""Model selection for a multi-objective search, on the val split: each trial's best epoch on the first objective
(its checkpoint kept), the Pareto front of those points, and the space's pick rule choosing one of them.

A point is on the front when no other point is at least as good on every objective and better on one. The pick
rule (search.pick) takes the front's best on one objective among the members within every limit; when no member
is within them, the member best on the first limited objective (the nearest to the limit) is taken and the
search says so, rather than registering nothing after the compute was spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tune_ct.train.best import BestTrial, as_best, best_epochs
from tune_ct.train.space import Pick


@dataclass
class Point:
    """One trial at its best epoch: its objective values (val split and costs) and what registering it needs."""

    values: dict[str, float]
    best: BestTrial

    @property
    def trial_id(self) -> str:
        return self.best.trial_id


@dataclass
class Front:
    points: list[Point]  # every trial with all its objective values
    front: list[Point]  # the non-dominated ones, best first on the first objective
    picked: Point
    met: bool  # the picked member is within every limit of the rule
    left_out: list[str]  # trials without a value for some objective (errored before reporting it)


def dominates(a: dict[str, float], b: dict[str, float], objectives: tuple[tuple[str, str], ...]) -> bool:
    """a is at least as good as b on every objective and better on at least one."""
    signs = [(1 if mode == "max" else -1, name) for name, mode in objectives]
    no_worse = all(s * a[n] >= s * b[n] for s, n in signs)
    return no_worse and any(s * a[n] > s * b[n] for s, n in signs)


def pareto_front(points: list[Point], objectives: tuple[tuple[str, str], ...]) -> list[Point]:
    """The points no other point dominates, ordered best first on the first objective."""
    front = [p for p in points if not any(dominates(q.values, p.values, objectives) for q in points)]
    name, mode = objectives[0]
    return sorted(front, key=lambda p: (-p.values[name] if mode == "max" else p.values[name], p.trial_id))


def within(point: Point, limits: tuple[tuple[str, float], ...], modes: dict[str, str]) -> bool:
    return all(point.values[n] <= bound if modes[n] == "min" else point.values[n] >= bound for n, bound in limits)


def pick(front: list[Point], objectives: tuple[tuple[str, str], ...], rule: Pick | None) -> tuple[Point, bool]:
    """(the member the rule picks, whether it is within the rule's limits)."""
    modes = dict(objectives)
    rule = rule or Pick(objectives[0][0])
    allowed = [p for p in front if within(p, rule.limits, modes)]
    name = rule.best if allowed else rule.limits[0][0]
    sign = 1 if modes[name] == "max" else -1
    candidates = allowed or front
    return max(candidates, key=lambda p: (sign * p.values[name], -candidates.index(p))), bool(allowed)


def search_front(trials: Iterable[tuple[dict, object]], objectives: tuple[tuple[str, str], ...], rule: Pick | None,
                 exists: Callable[[str], bool], runs: dict[str, str]) -> Front:
    """Points, front and pick from Tune's per-trial results (config, per-epoch DataFrame)."""
    metric, mode = objectives[0]
    points, left_out = [], []
    for config, row in best_epochs(trials, metric, mode, exists):
        values = {n: float(row[n]) if n in row.index else math.nan for n, _ in objectives}
        if all(math.isfinite(v) for v in values.values()):
            points.append(Point(values, as_best(config, row, runs)))
        else:
            left_out.append(str(row["trial_id"]))
    if not points:
        raise RuntimeError("no trial reported a checkpoint with every objective "
                           f"({', '.join(n for n, _ in objectives)}): see the trial errors above")
    front = pareto_front(points, objectives)
    picked, met = pick(front, objectives, rule)
    return Front(points, front, picked, met, left_out)


def front_summary(result: Front, objectives: tuple[tuple[str, str], ...], rule: Pick | None) -> dict:
    """The summary's `pareto_front` (val-split figures and costs of each member, the picked one marked) and
    `pick` (the rule and whether the picked member meets it)."""
    def row(p: Point) -> dict:
        return {"trial_id": p.trial_id, "run_id": p.best.run_id, "epoch": p.best.epoch, "split": "val", **p.values,
                "backbone": p.best.config.get("backbone"), "image_size": p.best.config.get("image_size"),
                "picked": p is result.picked}

    rule = rule or Pick(objectives[0][0])
    return {"objectives": dict(objectives), "pareto_front": [row(p) for p in result.front],
            "trial_points": [row(p) for p in result.points],
            "pick": {"best": rule.best, "limits": dict(rule.limits), "met": result.met,
                     "trial_id": result.picked.trial_id},
            "trials_on_front": len(result.front), "trials_without_objectives": result.left_out}
