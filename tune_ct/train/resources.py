"""Checks of the Ray cluster before any trial: Ray Train waits forever, without an error, for what it cannot get."""

from __future__ import annotations

from tune_ct.train.space import SearchSettings, SpaceError


class ClusterError(RuntimeError):
    """The Ray cluster cannot run a search to its end; the message says what to change."""


def check_dashboard(dashboard_url: str | None, address: str | None) -> None:
    """Refuse a cluster without Ray's dashboard: Ray Train frees the CPUs/GPUs of a trial that ASHA stops through
    a cleaner that asks the dashboard's state API. Without it those resources are never freed and the next trials
    wait for them until they time out (seen on a GPU node: the cleaner only logs "State API may be temporarily
    unavailable")."""
    if not dashboard_url:
        where = f"the cluster at {address}" if address else "the local Ray this search started"
        raise ClusterError(f"Ray's dashboard is not running on {where}. Install ray[default] (pip install -e .) "
                           "on every node, and do not start the head with --include-dashboard=false: Ray Train "
                           "needs its state API to free the resources of stopped trials.")


def check_resources(search: SearchSettings, max_concurrent: int, cluster: dict[str, float],
                    where: str = "the space") -> tuple[float, int]:
    """(GPUs per worker, trials at once) for a trial shape the cluster can place, else a SpaceError.

    `cluster` is what ray.cluster_resources() returns; trials beyond what it holds at once would only wait for
    resources while holding a Tune slot, so concurrency is capped by CPUs and GPUs."""
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    need_cpu = search.workers_per_trial * search.cpus_per_worker
    gpus_per_worker = search.gpus_per_worker
    if gpus_per_worker == "auto":
        gpus_per_worker = 1 if gpus >= search.workers_per_trial else 0
    need_gpu = search.workers_per_trial * gpus_per_worker
    if need_cpu > cpus or need_gpu > gpus:
        raise SpaceError(
            f"{where}: search asks {search.workers_per_trial} worker(s) x {search.cpus_per_worker} CPU"
            f" / {gpus_per_worker} GPU per trial, but the cluster has {cpus:g} CPU and {gpus:g} GPU; lower "
            "search.workers_per_trial / cpus_per_worker / gpus_per_worker"
        )
    # Divide, then floor with a tolerance: 1.0 // 0.1 is 9.0 in floating point, not 10.
    fits = [max_concurrent, int(cpus / need_cpu + 1e-9) if need_cpu else max_concurrent]
    if need_gpu:
        fits.append(int(gpus / need_gpu + 1e-9))
    return float(gpus_per_worker), max(1, min(fits))
