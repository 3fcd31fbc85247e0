"""The `actor` trial runner: the training loop runs inside the Tune trial actor itself, as Ray recommends for
single-process trials. With `reuse_actors=True` the process, its imports (torch, timm), its CUDA context and its
open image caches serve trial after trial, so a trial starts in about a second instead of starting 5+ processes.

Checkpoints and resumption are Tune's own: `ray.tune.report(..., checkpoint=...)` and `ray.tune.get_checkpoint()`;
the run's CheckpointConfig keeps the best epoch by the space's metric and Tune's FailureConfig retries a trial from
its last checkpoint (on another node when its node is lost). The loop is the same one the `train` runner runs.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

from tune_ct.train.settings import TrialSettings


def actor_trial(config: dict, settings: TrialSettings) -> None:
    """Tune function trainable: one trial in this (possibly reused) actor process."""
    from tune_ct.train.loop import LoopContext, fit

    device = start_clean(settings)
    ctx = LoopContext(rank=0, world_size=1, device=device, prepare_model=lambda model: model.to(device),
                      report=report_to_tune, restore=restore_from_tune, open_cache=open_cache)
    try:
        fit(config, settings, ctx)
    finally:
        release_memory(device)  # the next trial in this actor gets the memory back


def start_clean(settings: TrialSettings):
    """A reused actor must not hand one trial's state to the next: the previous trial's model and optimizer were
    freed as it ended (release_memory); reset the flags a trial may set. Seeds and the thread count are set by the loop itself for every trial."""
    import torch

    if gc.get_freeze_count() == 0:
        # Once per process: every full collection walks all the objects the imports (torch, timm, Ray) left, 0.3 s
        # each time here; frozen, release_memory's collection takes 0.02 s.
        gc.collect()
        gc.freeze()
    use_cuda = bool(settings.gpus_per_worker) and torch.cuda.is_available()
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = False
    return torch.device("cuda" if use_cuda else "cpu")


def release_memory(device) -> None:
    """Free what the last trial left (model, optimizer, batches) and give it back to the system: glibc keeps
    freed heap pages in its arenas, so without malloc_trim a reused actor's resident memory only ever grows."""
    import ctypes

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass


# Process-wide on purpose: a reused actor keeps its memory maps open from one trial to the next.
_OPEN_CACHES: dict[tuple, object] = {}


def open_cache(subset_path: str, size: int, cache_root: str, per_film):
    """The memory-mapped cache, opened once per process and (subset, size, preprocessing): trials that share an
    image size in a reused actor share its pages."""
    from tune_ct.data.cache import open_or_build

    key = (str(subset_path), int(size), str(cache_root), per_film.key if per_film else "")
    if key not in _OPEN_CACHES:
        _OPEN_CACHES[key] = open_or_build(Path(subset_path), int(size), Path(cache_root), per_film=per_film)
    return _OPEN_CACHES[key]


def report_to_tune(metrics: dict, training, epoch: int) -> float:
    """The epoch's report with its checkpoint; returns the seconds the report took (logged with the next epoch)."""
    import ray.tune

    from tune_ct.train.loop import save_epoch

    with tempfile.TemporaryDirectory() as tmp:
        metrics["time_checkpoint_s"] = save_epoch(Path(tmp), training, epoch, metrics)
        t = time.perf_counter()
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))
        return time.perf_counter() - t


def restore_from_tune():
    """The TrainState of the checkpoint Tune restores this trial from (a retry, or --resume), else None."""
    import ray.tune

    from tune_ct.model.checkpoint import load_train_state

    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_train_state(Path(folder))
