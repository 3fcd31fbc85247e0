"""What the trials of a search gave: the study settled where Tune left it unsettled, child runs of trials Tune
never knew closed, and the winner on the val split (the best epoch with a kept checkpoint, or for a
multi-objective search the Pareto front and the member its pick rule takes)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tune_ct.search.plan import SearchPlan
from tune_ct.search.trials import ParentRun, TrialsRun
from tune_ct.track.messages import first_line
from tune_ct.train.best import BestTrial, best_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    best: BestTrial  # the trial and epoch that is tested and registered
    front: object | None  # multi-objective: tune_ct.train.pareto.Front
    orphans: tuple[str, ...]  # child runs closed because Tune never knew their trial
    trial_models: dict[str, str]  # trial id -> its MLflow LoggedModel (its kept best checkpoint)
    ranked_models: tuple[dict, ...] = ()  # those models as MLflow ranks them on the search metric (val split)


def read_results(plan: SearchPlan, trials: TrialsRun, client, parent: ParentRun) -> Outcome:
    if trials.tracker.stopped_by_time_budget:  # the only trials Tune ends without telling the searcher
        settle_study(plan, trials.results)
    orphans = close_orphans(plan, trials.results, client, parent)
    per_trial = trials_with_checkpoints(plan, trials)
    best, front = pick_winner(plan, trials, per_trial)
    models = log_trial_models(plan, trials, per_trial, client, parent)
    return Outcome(best, front, tuple(orphans), models, ranked_models(plan, parent) if models else ())


def ranked_models(plan: SearchPlan, parent: ParentRun) -> tuple[dict, ...]:
    """The trial models read back through mlflow.search_logged_models, best first on the search metric."""
    from tune_ct.track.logged_models import ranked_trial_models

    split = "select_on" if plan.space.metric.startswith(("ext_", "blend_")) else "val"
    try:
        return tuple(ranked_trial_models(plan.experiment_id, parent.run_id, plan.space.metric, plan.space.mode,
                                         parent.dataset(split)))
    except Exception as exc:  # noqa: BLE001 - the listing is a convenience; the models are logged
        log.warning(f"WARNING: could not list the trials' models ({first_line(exc)})")
        return ()


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


def trials_with_checkpoints(plan: SearchPlan, trials: TrialsRun) -> list[tuple[dict, object]]:
    """(config, per-epoch results with a checkpoint_path column) of every trial."""
    return [(r.config, epochs_with_checkpoints(r.metrics_dataframe, {
        int(m["epoch"]): c.path for c, m in r.best_checkpoints or []})) for r in trials.results]


def checkpoint_exists_in(plan: SearchPlan):
    """Whether a checkpoint path (as Ray reports it) is still on the storage: Ray prunes all but the best two."""
    from tune_ct.train.storage import checkpoint_exists, storage_filesystem

    filesystem = storage_filesystem(plan.options.storage)
    return lambda path: checkpoint_exists(filesystem, path)


def pick_winner(plan: SearchPlan, trials: TrialsRun, per_trial: list):
    """(the winner, the Pareto front or None): only epochs whose checkpoint still exists count."""
    from tune_ct.train.best import best_trial

    runs, space, exists = trials.tracker.runs, plan.space, checkpoint_exists_in(plan)
    if space.search.multi_objective:
        from tune_ct.train.pareto import search_front

        front = search_front(per_trial, space.objectives, space.search.pick, exists, runs)
        return front.picked.best, front
    return best_trial(per_trial, space.metric, space.mode, exists, runs), None


def log_trial_models(plan: SearchPlan, trials: TrialsRun, per_trial: list, client, parent: ParentRun) -> dict:
    """One MLflow LoggedModel per trial that kept a checkpoint (its best epoch), made once: a resumed search
    finds the ones it made before. A tracking server down at this point costs the models, not the search."""
    from tune_ct.track.logged_models import existing_trial_models, log_trial_model
    from tune_ct.train.best import best_epochs

    try:
        made = existing_trial_models(plan.experiment_id, parent.run_id)
        for config, row in best_epochs(per_trial, plan.space.metric, plan.space.mode, checkpoint_exists_in(plan)):
            model = trial_model(plan, trials, config, row)
            if model is not None and model.trial_id not in made:
                made[model.trial_id] = log_trial_model(client, plan.experiment_id, parent.run_id, model,
                                                       parent.dataset("val"), parent.dataset("select_on"))
        return made
    except Exception as exc:  # noqa: BLE001
        log.warning(f"WARNING: the trials' models did not all reach MLflow ({first_line(exc)})")
        return {}


def trial_model(plan: SearchPlan, trials: TrialsRun, config: dict, row):
    """A trial's best epoch as a TrialModel (None for a trial with no child run)."""
    import numbers

    from tune_ct.track.logged_models import TrialModel

    trial_id = str(row["trial_id"])
    run_id = trials.tracker.runs.get(trial_id)
    if run_id is None:
        return None
    storage, path = plan.options.storage, str(row["checkpoint_path"])
    uri = f"{storage.split('://')[0]}://{path}" if "://" in storage else path  # Ray's paths drop the scheme
    values = {k: float(v) for k, v in row.items()
              if isinstance(v, numbers.Real) and not isinstance(v, bool) and v == v}
    return TrialModel(
        trial_id, run_id, f"{trial_id}-{config.get('backbone')}-{config.get('image_size')}px", uri, int(row["epoch"]),
        stop_reason_of(trials, trial_id, config),
        {k: str(config.get(k)) for k in ("backbone", "image_size", "pretrained", "equalize", "lung_crop")},
        {k: v for k, v in values.items() if k.startswith("val_")},
        {k: v for k, v in values.items() if k.startswith(("ext_val_", "blend_"))})


def stop_reason_of(trials: TrialsRun, trial_id: str, config: dict) -> str:
    """no (it ran all its epochs), time_budget or asha."""
    result = next((r for r in trials.results if str((r.metrics or {}).get("trial_id")) == trial_id), None)
    epochs_run = int((result.metrics or {}).get("epoch", 0)) if result is not None else 0
    if epochs_run >= int(config.get("epochs", epochs_run)):
        return "no"
    return "time_budget" if trial_id in trials.tracker.stopped_by_time_budget else "asha"
