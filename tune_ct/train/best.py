"""Model selection on the val split: the trial and epoch with the best val metric over every epoch.

The one rule for "a trial's best epoch" (`better`, `best_row`): the search's choice, the Pareto points, the values a
study is told and the checkpoints kept all follow it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class BestTrial:
    trial_id: str
    config: dict
    epoch: int
    val_metrics: dict
    checkpoint_path: str
    run_id: str | None
    costs: dict | None = None  # the trial's cpu_ms_per_film / param_count, when reported


def better(a: float, b: float, mode: str) -> bool:
    """Whether metric value a beats b (ties do not: the earlier epoch or trial stays)."""
    return a > b if mode == "max" else a < b


def best_row(df, metric: str, mode: str):
    """The row of a per-epoch results DataFrame with the best `metric` (the first of equal ones)."""
    return df.loc[df[metric].idxmax() if mode == "max" else df[metric].idxmin()]


def best_epochs(trials: Iterable[tuple[dict, object]], metric: str, mode: str,
                exists: Callable[[str], bool]) -> list[tuple[dict, object]]:
    """(config, row) of each trial's best epoch on `metric`. `trials`: (config, per-epoch results DataFrame) per
    trial, as Tune's ResultGrid holds them. Only epochs whose checkpoint still `exists` count: Ray keeps the best
    few checkpoints and deletes the rest."""
    out = []
    for config, df in trials:
        if df is None or metric not in df or "checkpoint_path" not in df:
            continue
        df = df.dropna(subset=[metric, "checkpoint_path"])
        df = df[[exists(str(p)) for p in df["checkpoint_path"]]]
        if not df.empty:
            out.append((config, best_row(df, metric, mode)))
    return out


SELECTION_PREFIXES = ("val_", "ext_val_", "blend_")


def _plain(value):
    """A pandas/numpy scalar as the Python number it holds (JSON writes it as a number, not a string)."""
    return value.item() if hasattr(value, "item") else value


def as_best(config: dict, row, runs: dict[str, str]) -> BestTrial:
    """One trial's epoch (a results row) as the search's choice: its val figures, checkpoint and MLflow run."""
    trial_id = str(row["trial_id"])
    # The val split's figures, and with --select-on those on the selection set (ext_val_*, blend_macro_f1).
    val = {k: _plain(row[k]) for k in row.index if str(k).startswith(SELECTION_PREFIXES)
           and k not in ("val_confusion_matrix", "ext_val_confusion_matrix")}
    val["confusion_matrix"] = row.get("val_confusion_matrix")
    costs = {k: float(row[k]) for k in ("cpu_ms_per_film", "param_count") if k in row.index and row[k] == row[k]}
    return BestTrial(trial_id, dict(config), int(row["epoch"]), val, str(row["checkpoint_path"]), runs.get(trial_id),
                     costs or None)


def best_trial(trials: Iterable[tuple[dict, object]], metric: str, mode: str, exists: Callable[[str], bool],
               runs: dict[str, str]) -> BestTrial:
    """The trial and epoch with the best `metric` over every trial's epochs that kept a checkpoint."""
    best = None
    for config, row in best_epochs(trials, metric, mode, exists):
        if best is None or better(row[metric], best[1][metric], mode):
            best = (config, row)
    if best is None:
        raise RuntimeError("no trial reported a checkpoint: see the trial errors above")
    return as_best(*best, runs)
