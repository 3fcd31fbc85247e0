"""One trial: a Ray Tune function trainable that runs a Ray Train `TorchTrainer` (Train V2 API).

`tune_trial` is what Tune schedules; it only builds and fits the trainer. `train_worker` runs on each Train
worker and hands the training loop (tune_ct.train.loop) a context backed by Ray Train. Metrics reach Tune through
Ray's `TuneReportCallback`. A restarted worker group resumes from the last checkpoint.

This module is imported by the trial actor and the Train controller (they unpickle tune_trial / train_worker),
so torch, timm and sklearn are imported only inside the worker.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from tune_ct.train.settings import TrialSettings

TRIAL_DRIVER_CPU = 0.01  # Tune rejects 0; the trial driver only waits on the TorchTrainer
# Ray Train's controller collects reports and notices a finished worker group only when it polls its workers
# (Ray's default: every 2 s, up to 2 s added to every trial's end); bench/overhead.py measures the difference.
TRAIN_POLL_INTERVAL_S = "0.5"
# Ray Train settings each trial applies unless the user set them (TorchTrainer passes them to its controller).
# The preemption watcher is one more actor process per trial that only logs node drains; trials resume from
# their checkpoints through FailureConfig either way.
TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_INTERVAL_S,
                      "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def build_trainer(config: dict, settings: TrialSettings, name: str, storage_path: str, callbacks: list | None = None,
                  driver_cpu: float = 0.0):
    """The one TorchTrainer of a trial (searched or not): resources, failure handling, best-epoch retention."""
    import ray.train
    from ray.train.torch import TorchTrainer

    for key, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # The caller's own driver holds driver_cpu; the workers take the rest of their CPU share, so N trials of one
    # 1-CPU worker fit exactly on N CPUs instead of leaving the last worker waiting forever.
    resources = {"CPU": max(settings.cpus_per_worker - driver_cpu, TRIAL_DRIVER_CPU)}
    if settings.gpus_per_worker:
        resources["GPU"] = settings.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker=train_worker,
        train_loop_config={"hp": dict(config), "settings": asdict(settings)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.workers_per_trial, use_gpu=bool(settings.gpus_per_worker),
            resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            # Keep the best epoch (what the search picks) and not only the newest ones.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=settings.metric, checkpoint_score_order=settings.mode
            ),
        ),
    )


def tune_trial(config: dict, settings: TrialSettings) -> None:
    """Tune function trainable: one Ray Train run per trial."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    context = ray.tune.get_context()
    # Same name and storage on a Tune retry, so the retried trial resumes from its own checkpoint.
    trainer = build_trainer(config, settings, f"{context.get_experiment_name()}-{context.get_trial_id()}",
                            f"{settings.storage_path}/train_runs", [TuneReportCallback()], TRIAL_DRIVER_CPU)
    trainer.fit()
    wait_until_tune_took_last_report()


def wait_until_tune_took_last_report(timeout_s: float = 60.0) -> None:
    """Keep the trial function alive until Tune has taken the Train run's last report.

    Ray 2.60 passes Train reports to Tune through a one-slot queue that Tune reads only while this function runs;
    a last report still queued when `trainer.fit()` returns was lost once here and the trial stayed RUNNING
    forever (two sub-second epochs on a loaded 2-core machine). Waiting for the queue to drain closes that window.
    """
    from ray.train._internal.session import get_session  # where TuneReportCallback's queue lives (Ray 2.60)

    queue = getattr(get_session(), "_inter_actor_queue", None)
    deadline = time.monotonic() + timeout_s
    while queue is not None and not queue.empty() and time.monotonic() < deadline:
        time.sleep(0.05)


def _gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _restore():
    """The TrainState of the checkpoint Ray Train resumes this run from, or None for a fresh run."""
    import ray.train

    from tune_ct.model.checkpoint import load_train_state

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return None
    with checkpoint.as_directory() as folder:
        return load_train_state(Path(folder))


def train_worker(loop_config: dict) -> None:
    """Ray Train worker: the training loop with Ray Train's rank, device, DDP wrapper, checkpoint and report."""
    import ray.train
    import ray.train.torch

    from tune_ct.train.loop import LoopContext, fit

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    loop_ctx = LoopContext(
        rank=rank, world_size=world, device=ray.train.torch.get_device(),
        prepare_model=ray.train.torch.prepare_model,
        report=lambda metrics, training, epoch: report_epoch(metrics, rank, training, epoch),
        restore=_restore, gather=lambda obj: _gather(obj, world),
    )
    fit(loop_config["hp"], TrialSettings(**loop_config["settings"]), loop_ctx)


def report_epoch(metrics: dict, rank: int, training, epoch: int) -> float:
    """Report an epoch to Ray Train: rank 0 with its checkpoint (the report saved beside it), other ranks without.
    Returns the seconds the report itself took (logged with the next epoch)."""
    import ray.train

    from tune_ct.train.loop import save_epoch

    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            metrics["time_checkpoint_s"] = save_epoch(Path(tmp), training, epoch, metrics)
        t = time.perf_counter()
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)
        return time.perf_counter() - t
