"""A search, step by step: `run_search` reads as the list of them.

Checks come first (space, tracking server, data, Ray cluster), so a mistake costs seconds, not a night of GPUs.
The test split is touched once, at the end, by the winner alone. The parent run ends FINISHED, FAILED or KILLED.
A stop (SIGINT, SIGTERM, SIGHUP) during the trials closes their runs KILLED, tests and registers nothing, and
prints the command that finishes the search; a stop during the final test and registration lets them finish
(seconds, never a half-registered version) and is reported in `Finished.late_signal`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tune_ct.search.checks import check_before_compute
from tune_ct.search.options import SearchOptions

if TYPE_CHECKING:  # imported where they run: a mistake is reported before Ray and MLflow load
    from tune_ct.registry.publish import BestModel, Published
    from tune_ct.search.plan import SearchPlan
    from tune_ct.search.results import Outcome
    from tune_ct.search.summary import SearchSummary
    from tune_ct.search.trials import ParentRun, TrialsRun
    from tune_ct.train.stop_signals import StopHandlers


@dataclass(frozen=True)
class Finished:
    summary: SearchSummary
    logged: dict  # the outcome of logging the summary (tracking_* keys, for the --summary file alone)
    late_signal: int | None = None  # a stop signal that came during the final test and registration


def run_search(options: SearchOptions) -> Finished:
    started = time.monotonic()
    space = check_before_compute(options)  # a mistake fails here in seconds, before Ray and MLflow load
    from tune_ct.search.plan import plan_search, prepare_data
    from tune_ct.search.store_lock import one_search_per_store
    from tune_ct.track.uri import connect

    with one_search_per_store(options.tracking_uri, options.optuna_storage, options.argv):
        data = prepare_data(options.data)  # the manifest: a missing or empty dataset fails here
        client = connect(options.tracking_uri)  # the first write to the tracking store
        plan = plan_search(options, space, data, client)
        return search_on_ray(plan, client, started)


def search_on_ray(plan: SearchPlan, client, started: float) -> Finished:
    from tune_ct.search.cluster import fit_to_cluster, ray_session
    from tune_ct.search.console import announce, announce_links
    from tune_ct.search.trials import open_parent_run

    options = plan.options
    with ray_session(options) as (context, handlers):
        announce(plan.name, context, options.verbose, plan.study_storage)
        plan = fit_to_cluster(plan, context)
        parent = open_parent_run(plan, client)
        announce_links(options.tracking_uri, plan.experiment_id, parent.run_id)
        return search_and_publish(plan, client, parent, handlers, started)


def search_and_publish(plan: SearchPlan, client, parent: ParentRun, handlers: StopHandlers,
                       started: float) -> Finished:
    """Run the trials, then test and register the winner; the parent run ends FINISHED, FAILED or KILLED."""
    from tune_ct.search.final_test import publish_winner, score_held_out_films, score_winner
    from tune_ct.search.record import log_start_extras, record
    from tune_ct.search.results import read_results
    from tune_ct.search.trials import build_caches, run_trials
    from tune_ct.track.parent_run import close_interrupted, terminate
    from tune_ct.train.stop_signals import stopped_by

    status = "FAILED"
    try:
        log_start_extras(plan, client, parent)
        build_caches(plan)
        trials = run_trials(plan, parent, handlers)
        outcome = read_results(plan, trials, client, parent)
        with handlers.deferred():
            tested = score_winner(plan, outcome.best)
            held_out = score_held_out_films(plan, tested)
            published = publish_winner(plan, parent, tested, client)
            summary = summarize(plan, parent, trials, outcome, tested, published, started, held_out)
            logged = record(summary, plan, client, parent)
        status = "FINISHED"
        return Finished(summary, logged, handlers.held)
    except KeyboardInterrupt as exc:
        status = "KILLED"
        stop_cleanly(plan, client, parent, stopped_by(exc).name)
        raise
    except Exception:
        with contextlib.suppress(Exception):  # a server down must not hide the error itself
            close_interrupted(client, plan.experiment_id, parent.run_id)  # no child run left RUNNING for ever
        raise
    finally:
        terminate(client, parent.run_id, status)


def stop_cleanly(plan: SearchPlan, client, parent: ParentRun, why: str) -> None:
    """A stopped search: the trials' runs closed KILLED and the parent tagged; nothing is tested or registered;
    the exact command that finishes the search is printed."""
    from tune_ct.search.console import print_stopped
    from tune_ct.track.parent_run import close_interrupted

    close_interrupted(client, plan.experiment_id, parent.run_id)
    print_stopped(plan.options.argv, plan.name, why)


def selection_of(plan: SearchPlan, outcome: Outcome) -> dict:
    """The metric that chose the winner, its value and where it was measured."""
    metric = plan.space.metric
    where = f"select-on set {plan.select_on.films.name}" if plan.select_on and metric.startswith(("ext_", "blend_")) \
        else "val"
    value = outcome.best.val_metrics.get(metric)
    return {"metric": metric, "mode": plan.space.mode, "value": None if value is None else float(value),
            "split": where}


def summarize(plan: SearchPlan, parent: ParentRun, trials: TrialsRun, outcome: Outcome, tested: BestModel,
              published: Published, started: float, held_out: dict | None = None) -> SearchSummary:
    from tune_ct.search.final_test import origin_roles
    from tune_ct.search.summary import SearchSummary
    from tune_ct.train.pareto import front_summary

    best, tracker, data = outcome.best, trials.tracker, plan.data
    ext = plan.select_on.films if plan.select_on else None
    return SearchSummary(
        name=plan.name, parent_run_id=parent.run_id, best_trial_id=best.trial_id, best_run_id=best.run_id,
        best_config=best.config,
        best_epoch=best.epoch, best_checkpoint=best.checkpoint_path, selection=selection_of(plan, outcome),
        val_metrics={"split": "val", **best.val_metrics}, test_metrics=tested.evaluation.headline(),
        test_report=published.report, lung_focus=published.lung_focus, model_uri=published.model_uri,
        registered_model=published.registered_model, registered_version=published.registered_version,
        child_run_ids=[tracker.runs[t] for t in sorted(tracker.runs)], trials=len(trials.results),
        trials_errored=sum(1 for r in trials.results if r.error), data=str(data.root),
        manifest=str(data.manifest_path), manifest_hash=data.manifest.hash, trainval_subset=str(data.trainval_path),
        workdir=str(plan.work.root),
        limit_per_class=plan.options.data.limit_per_class, space=str(plan.space.path), storage=plan.options.storage,
        seconds=round(time.monotonic() - started, 1), optuna_storage=plan.study_storage,
        optuna_study=plan.name if plan.study_storage else None,
        select_on=None if ext is None else {"name": ext.name, "root": str(ext.root), "hash": ext.content_hash,
                                            "n": len(ext.entries), "classes": ext.classes_present},
        sampler=dataclasses.asdict(plan.sampler), warm_start=plan.warm_start.as_dict() if plan.warm_start else None,
        best_costs=best.costs, origins=origin_roles(plan), held_out=held_out,
        collections=dict(data.manifest.collections) or None, orphan_child_runs=list(outcome.orphans),
        best_model_id=outcome.trial_models.get(best.trial_id), trial_models=list(outcome.ranked_models), time_budget_s=tracker.time_budget_s,
        stopped_by_time_budget=list(tracker.stopped_by_time_budget), tracking_delayed_calls=tracker.delayed,
        tracking_unlogged=list(tracker.unlogged),
        **(front_summary(outcome.front, plan.space.objectives, plan.space.search.pick) if outcome.front else {}),
    )
