"""What the trials of a search gave: the study settled where Tune left it unsettled, child runs of trials Tune
never knew closed, and the winner on the val split (the best epoch with a kept checkpoint, or for a
multi-objective search the Pareto front and the member its pick rule takes)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tune_ct.search.plan import SearchPlan
from tune_ct.search.trials import ParentRun, TrialsRun
from tune_ct.train.best import BestTrial, best_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    best: BestTrial  # the trial and epoch that is tested and registered
    front: object | None  # multi-objective: tune_ct.train.pareto.Front
    orphans: tuple[str, ...]  # child runs closed because Tune never knew their trial


def read_results(plan: SearchPlan, trials: TrialsRun, client, parent: ParentRun) -> Outcome:
    if trials.tracker.stopped_by_time_budget:  # the only trials Tune ends without telling the searcher
        settle_study(plan, trials.results)
    orphans = close_orphans(plan, trials.results, client, parent)
    best, front = pick_winner(plan, trials)
    return Outcome(best, front, tuple(orphans))


def ended_trial(result, objectives: tuple[tuple[str, str], ...]) -> tuple[dict, dict | None, int]:
    """(config, its best report on the first objective, epochs run) of a trial Tune ended, from its results."""
    df = result.metrics_dataframe
    name, mode = objectives[0]
    if df is None or df.empty or name not in df or df[name].isna().all():
        return dict(result.config), None, 0
    best = best_row(df.dropna(subset=[name]), name, mode)
    return dict(result.config), best.to_dict(), int(df["epoch"].max()) if "epoch" in df else len(df)


def settle_study(plan: SearchPlan, results: list) -> None:
    """Optuna trials still RUNNING after the search (Tune stopped them at the time budget without telling the
    searcher) are told what their Tune trials did: PRUNED if stopped early (tune_ct.track.study.verdict)."""
    from tune_ct.track.study import finish_running, load_study

    study = load_study(plan.study_storage, plan.name) if plan.study_storage else None
    if study is None:
        return
    ended = [ended_trial(r, plan.space.objectives) for r in results]
    told = finish_running(study, ended, [n for n, _ in plan.space.objectives])
    if told:
        log.info(f"Optuna study {plan.name}: trial(s) {told} stopped by the time budget, told how far they got")


def close_orphans(plan: SearchPlan, results: list, client, parent: ParentRun) -> list[str]:
    from tune_ct.search.console import announce_orphans
    from tune_ct.track.tracker import close_orphan_runs

    try:
        orphans = close_orphan_runs(client, plan.experiment_id, parent.run_id,
                                    {str(r.metrics.get("trial_id")) for r in results if r.metrics})
    except Exception as exc:  # noqa: BLE001 - a tracking server down at the end must not lose the search
        log.warning(f"WARNING: could not look for orphaned child runs: {exc}")
        return []
    announce_orphans(orphans)
    return orphans


def epochs_with_checkpoints(df, kept: dict[int, str]):
    """A trial's per-epoch results with a checkpoint_path column: the train runner reports it as a metric, the
    actor runner's checkpoints are Tune's own (`kept`: epoch -> path of those its CheckpointConfig kept)."""
    if df is None or "checkpoint_path" in df or not kept:
        return df
    return df.assign(checkpoint_path=df["epoch"].map(kept))


def pick_winner(plan: SearchPlan, trials: TrialsRun):
    """(the winner, the Pareto front or None): only epochs whose checkpoint still exists count."""
    from tune_ct.train.best import best_trial
    from tune_ct.train.storage import checkpoint_exists, storage_filesystem

    filesystem = storage_filesystem(plan.options.storage)
    per_trial = [(r.config, epochs_with_checkpoints(r.metrics_dataframe, {
        int(m["epoch"]): c.path for c, m in r.best_checkpoints or []})) for r in trials.results]

    def exists(path: str) -> bool:
        return checkpoint_exists(filesystem, path)

    runs = trials.tracker.runs
    space = plan.space
    if space.search.multi_objective:
        from tune_ct.train.pareto import search_front

        front = search_front(per_trial, space.objectives, space.search.pick, exists, runs)
        return front.picked.best, front
    return best_trial(per_trial, space.metric, space.mode, exists, runs), None
