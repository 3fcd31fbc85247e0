"""Ray for one search: started (or joined with --address) with the console kept for the trial table, and the plan
fitted to what the cluster has (GPUs per worker, how many trials at once), before any trial starts."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from tune_ct.search.options import SearchOptions
from tune_ct.search.plan import SearchPlan
from tune_ct.train.stop_signals import StopHandlers, ignored_at_start, stop_on_signals


def ray_init_args(options: SearchOptions) -> dict:
    """What reaches the console from Ray: warnings and errors, the driver's INFO and the workers' output only
    with --verbose (they stay in Ray's session logs and, per trial, in its folder under the storage). The
    Hugging Face settings (HF_HOME, HF_HUB_OFFLINE) travel to every worker, also on a cluster's other nodes."""
    # "local" always starts a fresh Ray for this search; plain ray.init() would silently join any cluster that
    # `ray start` left running on this machine.
    args = {"address": options.address or "local", "log_to_driver": options.verbose,
            "logging_level": logging.INFO if options.verbose else logging.WARNING}
    hub_env = {k: v for k, v in os.environ.items() if k.startswith("HF_")}
    if hub_env:
        args["runtime_env"] = {"env_vars": hub_env}
    return args


@contextmanager
def ray_session(options: SearchOptions) -> Iterator[tuple[object, StopHandlers]]:
    """Ray for the search (its context: dashboard URL, session folder), shut down however the search ends, and
    the handlers that turn SIGINT, SIGTERM and SIGHUP into a clean stop (tune_ct.train.stop_signals)."""
    import ray

    # Tune's default output engine prints a configuration box even at verbose=0; its legacy engine at verbose=0
    # prints nothing, which leaves the console to the trial table (--verbose: the default engine, in full).
    if not options.verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        # Tune warns when experiment snapshots come close together; keeping the best epoch's checkpoint forces
        # one per report by design (CheckpointConfig num_to_keep), so the advice it prints does not apply.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A stop (Ctrl-C, SIGTERM, SIGHUP) reaches the search as a KeyboardInterrupt, instead of Tune's handler
    # returning the trials so far as if the search had ended (which then tested and registered an epoch-1 checkpoint).
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    ignored = ignored_at_start()
    context = ray.init(**ray_init_args(options))
    try:
        with stop_on_signals(ignored) as handlers:  # after ray.init: it installs a SIGTERM handler of its own
            yield context, handlers
    finally:
        ray.shutdown()


def fit_to_cluster(plan: SearchPlan, context) -> SearchPlan:
    """The plan with the cluster's share filled in: GPUs per worker (auto: one when the cluster has GPUs) and the
    trials that fit at once. A cluster without a dashboard, or too small for one trial, is refused here."""
    import ray

    from tune_ct.train.resources import check_dashboard, check_resources

    search, options = plan.space.search, plan.options
    check_dashboard(context.dashboard_url, options.address)
    gpus, concurrent = check_resources(search, options.max_concurrent or search.max_concurrent,
                                       ray.cluster_resources(), str(plan.space.path))
    return dataclasses.replace(plan, gpus_per_worker=gpus, max_concurrent=concurrent)
