"""System metrics of every trial (CPU, memory, GPU utilisation), in MLflow's System metrics tab of its child run.

MLflow's own monitor (mlflow.system_metrics) samples the process that runs it and logs to MLflow from there. A
trial trains in a Ray process (the reused trial actor, or Ray Train workers) that never talks to MLflow, often on
another node than the driver, so a monitor in the driver would describe the wrong machine. Instead the trial's
process samples its own node (psutil; GPUs through NVML) and pushes each sample to a small actor of the search
(`SystemSink`); the driver's TrialTracker drains it and logs the samples under MLflow's names
(`system/cpu_utilization_percentage`, `system/gpu_0_utilization_percentage`, ...), with the sample's time.

With the `actor` runner the sampled process is the one that trains: its own CPU and memory are logged too
(`system/trial_process_*`). With the `train` runner it is the trial's driver, which waits on its Ray Train
workers: the node figures are those of that driver's node (the workers' on a single machine).
"""

from __future__ import annotations

import functools
import logging
import threading
import time

log = logging.getLogger(__name__)
SINK_PREFIX = "tune_ct-system-metrics-"
# The first sample comes soon, so that a trial stopped after a short first epoch (by ASHA, or a tiny test trial)
# has one: a stopped trial's function may never return to push its last sample.
FIRST_SAMPLE_S = 0.2


def sink_name(run_name: str) -> str:
    return SINK_PREFIX + run_name


def start_sink(run_name: str):
    """The search's sink actor (no CPU reserved: it only holds samples until the driver takes them)."""
    import ray

    remote = ray.remote(num_cpus=0, max_restarts=0)(SystemSink)
    return remote.options(name=sink_name(run_name), get_if_exists=True).remote()


class SystemSink:
    """Samples per trial id, in arrival order, until drained."""

    def __init__(self):
        self._samples: list[tuple[str, dict]] = []

    def put(self, trial_id: str, sample: dict) -> None:
        self._samples.append((trial_id, sample))

    def drain(self) -> list[tuple[str, dict]]:
        out, self._samples = self._samples, []
        return out


def _gpu_handles(indices: list[int] | None):
    """NVML handles of the trial's GPUs (all of the node's when it has none of its own); [] without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        wanted = [i for i in (indices or range(count)) if 0 <= i < count]
        return [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in wanted]
    except Exception:  # noqa: BLE001 - no NVIDIA driver or no nvidia-ml-py: no GPU figures, nothing else lost
        return []


def sample(process, gpus) -> dict[str, float]:
    """One sample, with MLflow's system-metric names (system/ prefix: the UI's System metrics tab)."""
    import psutil

    memory = psutil.virtual_memory()
    out = {"system/cpu_utilization_percentage": psutil.cpu_percent(interval=None),
           "system/system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
           "system/system_memory_usage_percentage": memory.percent}
    if process is not None:
        with process.oneshot():
            out["system/trial_process_cpu_percentage"] = process.cpu_percent(interval=None)
            out["system/trial_process_memory_megabytes"] = process.memory_info().rss / 2**20
    for index, handle in gpus:
        import pynvml

        util, mem = pynvml.nvmlDeviceGetUtilizationRates(handle), pynvml.nvmlDeviceGetMemoryInfo(handle)
        out[f"system/gpu_{index}_utilization_percentage"] = float(util.gpu)
        out[f"system/gpu_{index}_memory_usage_megabytes"] = mem.used / 2**20
        out[f"system/gpu_{index}_memory_usage_percentage"] = 100.0 * mem.used / max(1, mem.total)
    return out


class Sampler:
    """A daemon thread in the trial's process: a sample after FIRST_SAMPLE_S (CPU percentages need an interval),
    then every `interval_s`, and one, confirmed by the sink, as the trial function returns."""

    def __init__(self, sink, trial_id: str, interval_s: float, own_process: bool):
        import psutil

        self.sink, self.trial_id, self.interval_s = sink, trial_id, interval_s
        self.process = psutil.Process() if own_process else None
        self.gpus = _gpu_handles(_ray_gpu_ids())
        self._stop = threading.Event()
        psutil.cpu_percent(interval=None)  # starts the interval the first sample measures
        if self.process is not None:
            self.process.cpu_percent(interval=None)
        self._thread = threading.Thread(target=self._run, name="tune_ct-system-metrics", daemon=True)

    def _push(self, wait_s: float | None = None) -> None:
        import ray

        try:
            ref = self.sink.put.remote(self.trial_id, {"time": time.time(), **sample(self.process, self.gpus)})
            if wait_s:
                ray.get(ref, timeout=wait_s)
        except Exception as exc:  # noqa: BLE001 - a missing sample must never fail the trial
            log.debug(f"system metrics sample lost: {exc}")

    def _run(self) -> None:
        wait = min(FIRST_SAMPLE_S, self.interval_s)
        while not self._stop.wait(wait):
            self._push()
            wait = self.interval_s

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        # Confirmed before the trial function returns, so the driver's last drain finds it: a trial shorter than
        # the first interval has no other sample, and an unconfirmed one was lost on a loaded machine.
        self._push(wait_s=10.0)
        return False


def _ray_gpu_ids() -> list[int] | None:
    import ray

    try:
        return [int(i) for i in ray.get_gpu_ids()] or None
    except Exception:  # noqa: BLE001 - ids that are not indices (a pre-set CUDA_VISIBLE_DEVICES): all GPUs
        return None


def with_system_metrics(fn, run_name: str, interval_s: float, own_process: bool):
    """The trial function `fn`, sampled while it runs (same name and signature, so Tune names trials as before)."""

    @functools.wraps(fn)
    def trial(config, **kwargs):
        import ray
        import ray.tune

        try:
            sink = ray.get_actor(sink_name(run_name))
        except ValueError:  # the search runs without a sink (a test, an old driver): train unsampled
            return fn(config, **kwargs)
        with Sampler(sink, ray.tune.get_context().get_trial_id(), interval_s, own_process):
            return fn(config, **kwargs)

    return trial


def drain(run_name: str, timeout_s: float = 5.0) -> list[tuple[str, dict]]:
    """The samples that arrived since the last drain (driver side); [] when the sink is gone."""
    import ray

    try:
        return ray.get(ray.get_actor(sink_name(run_name)).drain.remote(), timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - the sink died or Ray is shutting down: the samples are lost
        log.debug(f"system metrics not drained: {exc}")
        return []
