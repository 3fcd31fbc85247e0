"""The training loop, written once: train, validate, checkpoint and report once per epoch.

It knows nothing of Ray: the runner hands it a `LoopContext` (rank, world size, device, how to wrap the model for
DDP, how to report an epoch with its checkpoint, the checkpoint to resume from). The loop memory-maps the cached
train/val images (it never receives the test split) and trains with AdamW and a warm-up + cosine schedule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tune_ct.data.cache import CachedImages
from tune_ct.data.files import CLASSES
from tune_ct.model.augment import Augment, augment
from tune_ct.model.checkpoint import CheckpointMeta, TrainState
from tune_ct.model.inference import autocast_dtype, cpu_ms_per_film, predict, to_device
from tune_ct.model.networks import regularization_loss
from tune_ct.model.preprocess import Preprocessing
from tune_ct.train.hyperparameters import Hyperparameters
from tune_ct.train.settings import TrialSettings


@dataclass
class Training:
    """Everything one trial trains with, built once before the first epoch."""

    hp: Hyperparameters
    data: CachedImages
    train_idx: np.ndarray
    val_idx: np.ndarray
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    class_weight: torch.Tensor | None
    dtype: torch.dtype | None
    cache_seconds: float
    film: Preprocessing  # saved with each checkpoint: evaluation and predict apply the same
    external: CachedImages | None = None  # --select-on films, scored every epoch, never trained on

    @property
    def epochs(self) -> int:
        return self.hp.epochs

    def checkpoint_meta(self, epoch: int) -> CheckpointMeta:
        return CheckpointMeta(self.hp.backbone, self.hp.image_size, self.hp.as_dict(), epoch, self.film)


@dataclass
class LoopContext:
    """What a runner gives the loop. `report(metrics, training, epoch)` returns the seconds the report took."""

    rank: int
    world_size: int
    device: torch.device
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module]
    report: Callable[[dict, Training, int], float]
    restore: Callable[[], TrainState | None]
    gather: Callable[[object], list] = lambda obj: [obj]
    # (subset file, image size, cache root, PerFilm) -> CachedImages; default: open it anew for every trial
    open_cache: Callable[..., CachedImages] | None = None


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights (sklearn's 'balanced'), so small classes count as much as large ones."""
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def warmup_cosine(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int,
                  warmup_epochs: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero at the last step; stepped once per batch."""
    warmup = int(warmup_epochs * steps_per_epoch)
    total = epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """How many batches `batches(..., drop_last=True)` yields for n rows: the schedule must match the steps run."""
    return max(1, n // batch_size) if n > batch_size else 1


def batches(indices: np.ndarray, batch_size: int, drop_last: bool):
    stop = len(indices) - (len(indices) % batch_size if drop_last and len(indices) > batch_size else 0)
    for start in range(0, stop, batch_size):
        yield np.sort(indices[start : start + batch_size])  # sorted reads are sequential in the memmap


def train_epoch(model, optimizer, scheduler, pixels: np.ndarray, labels: torch.Tensor, order: np.ndarray,
                batch_size: int, aug: Augment, generator: torch.Generator, device: torch.device,
                dtype: torch.dtype | None, weight: torch.Tensor | None = None,
                label_smoothing: float = 0.0) -> tuple[float, int, dict[str, float]]:
    """One pass over `order` (rows of the uint8 cache): (loss sum, images seen, seconds in data / compute).

    A function of its own so that bench/throughput.py times exactly the step the trials run. On CUDA the data /
    compute seconds are host-side (kernels run asynchronously); the epoch's total is exact once the loss is read."""
    model.train()
    timing = {"data": 0.0, "compute": 0.0}
    # Summed on the device: reading the loss every step would make the CPU wait for the GPU at every step.
    loss_sum, seen = torch.zeros((), device=device), 0
    for rows in batches(order, batch_size, drop_last=True):
        t = time.perf_counter()
        x = to_device(torch.from_numpy(np.asarray(pixels[rows])), device)
        y = to_device(labels[rows], device)
        x = augment(x, aug, generator).contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        timing["data"] += t1 - t
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=label_smoothing)
            reg = regularization_loss(model)
            if reg is not None:
                loss = loss + reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(rows)
        seen += len(rows)
        timing["compute"] += time.perf_counter() - t1
    return float(loss_sum), seen, timing


def setup_training(hp: Hyperparameters, settings: TrialSettings, ctx: LoopContext) -> Training:
    """Data, model, optimizer and schedule for one trial, on the context's device."""
    from tune_ct.data.cache import open_or_build
    from tune_ct.model.networks import build_model
    from tune_ct.model.preprocess import per_film

    torch.set_num_threads(max(1, round(settings.cpus_per_worker)))
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one image size per trial: pick the fastest kernels once
    t0 = time.perf_counter()
    film = Preprocessing.chosen(hp.equalize, hp.lung_crop, settings.segmenter_path)
    films = per_film(film)
    open_cache = ctx.open_cache or (lambda subset, size, root, films: open_or_build(subset, size, root, per_film=films))
    data = open_cache(settings.subset_path, hp.image_size, settings.cache_root, films)
    external = open_cache(settings.ext_subset_path, hp.image_size, settings.cache_root, films) \
        if settings.ext_subset_path else None
    cache_seconds = time.perf_counter() - t0
    train_idx, val_idx = data.indices("train"), data.indices("val")

    torch.manual_seed(settings.seed)
    model = build_model(hp.backbone, hp.image_size, settings.weights.get(hp.backbone), hp.pretrained, hp.film_norm,
                        hp.norm_layer)
    model = ctx.prepare_model(model.to(memory_format=torch.channels_last))
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    steps = steps_per_epoch(len(train_idx) // ctx.world_size, hp.batch_size)  # each rank's equal shard
    scheduler = warmup_cosine(optimizer, hp.epochs, steps, hp.warmup_epochs)
    weight = class_weights(data.labels[train_idx]).to(ctx.device) if hp.class_weighting else None
    dtype = autocast_dtype(hp.precision, ctx.device)
    return Training(hp, data, train_idx, val_idx, model, optimizer, scheduler, weight, dtype, cache_seconds, film,
                    external)


def resume(training: Training, state: TrainState) -> int:
    """Load a checkpoint's weights, optimizer and schedule; the epoch to continue from."""
    getattr(training.model, "module", training.model).load_state_dict(state.weights)
    training.optimizer.load_state_dict(state.optimizer)
    training.scheduler.load_state_dict(state.scheduler)
    return state.epoch


def _scored(training: Training, ctx: LoopContext, data: CachedImages, rows: np.ndarray,
            batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) over every rank's shard of `rows`, gathered."""
    shard = rows[ctx.rank :: ctx.world_size]
    probs = predict(training.model, data.pixels, shard, max(batch_size, 64), ctx.device, training.dtype)
    gathered = ctx.gather((data.labels[shard], probs))
    return np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered])


def validate(training: Training, ctx: LoopContext, batch_size: int) -> dict:
    """Val metrics with the val loss; with --select-on films, ext_val_* over the classes present there and
    blend_macro_f1, the mean of the two macro-F1s."""
    from tune_ct.evaluate.metrics import classification_metrics  # sklearn: only where the loop runs

    y_true, probs = _scored(training, ctx, training.data, training.val_idx, batch_size)
    val_loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-8)), torch.from_numpy(y_true)))
    metrics = {**classification_metrics(y_true, probs.argmax(1), prefix="val_"), "val_loss": val_loss}
    if training.external is not None:
        rows = np.arange(len(training.external.files))
        y_ext, p_ext = _scored(training, ctx, training.external, rows, batch_size)
        present = sorted(set(y_ext.tolist()))
        metrics.update(classification_metrics(y_ext, p_ext.argmax(1), prefix="ext_val_", labels=present))
        metrics["blend_macro_f1"] = (metrics["val_macro_f1"] + metrics["ext_val_macro_f1"]) / 2
    return metrics


def run_epoch(training: Training, settings: TrialSettings, ctx: LoopContext, epoch: int) -> dict:
    """Train one epoch on this rank's shard, validate, and return the epoch's report."""
    hp, world, rank = training.hp, ctx.world_size, ctx.rank
    generator = torch.Generator(device=ctx.device)
    generator.manual_seed(settings.seed * 1000 + epoch * world + rank)
    order = np.random.default_rng(settings.seed * 1000 + epoch).permutation(training.train_idx)
    # Equal shards: under DDP every rank must run the same number of steps or the all-reduce hangs.
    order = order[: len(order) - len(order) % world][rank::world]
    t = time.perf_counter()
    loss_sum, seen, timing = train_epoch(
        training.model, training.optimizer, training.scheduler, training.data.pixels,
        torch.from_numpy(training.data.labels), order, hp.batch_size, hp.augment, generator,
        ctx.device, training.dtype, training.class_weight, hp.label_smoothing)
    train_seconds = time.perf_counter() - t
    t = time.perf_counter()
    if hp.bn_recalibrate:
        recalibrate_batchnorm(training, ctx, settings.seed)
    metrics = validate(training, ctx, hp.batch_size)
    metrics.update({
        "epoch": epoch + 1,
        "epochs_planned": training.epochs,  # the searcher tells a study PRUNED from COMPLETE by it
        "train_loss": sum(ctx.gather(loss_sum)) / max(1, sum(ctx.gather(seen))),
        "lr": training.scheduler.get_last_lr()[0],
        "train_images_per_s": seen * world / max(train_seconds, 1e-9),
        "time_data_s": timing["data"], "time_compute_s": timing["compute"],
        "time_val_s": time.perf_counter() - t,
        "n_train": int(len(training.train_idx)), "n_val": int(len(training.val_idx)),
        "precision": str(training.dtype).replace("torch.", "") if training.dtype else "float32",
        "device": ctx.device.type,
    })
    return metrics


RECALIBRATION_FILMS = 2048  # clean training films the BatchNorm statistics are recomputed on, at most


def recalibrate_batchnorm(training: Training, ctx: LoopContext, seed: int) -> bool:
    """BatchNorm running statistics recomputed on clean (not augmented) training films, as an equal-weight average
    over them, so that the model validated and kept normalises films as they come, not as augmentation made
    them. Every rank runs the same films, so every rank validates and keeps the same statistics (validation runs
    the bare module on each rank's shard). Returns False for a network without BatchNorm."""
    from tune_ct.model.augment import to_model_input

    model = getattr(training.model, "module", training.model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    rows = np.random.default_rng(seed).permutation(training.train_idx)[:RECALIBRATION_FILMS]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch counts the same
    model.train()
    with torch.no_grad(), torch.autocast(ctx.device.type, dtype=training.dtype, enabled=training.dtype is not None):
        for batch in batches(rows, max(training.hp.batch_size, 64), drop_last=False):
            x = to_device(torch.from_numpy(np.asarray(training.data.pixels[batch])), ctx.device)
            model(to_model_input(x).contiguous(memory_format=torch.channels_last))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return True


SPEED_FILMS = 8  # the fixed batch of val films cpu_ms_per_film is timed on


def trial_costs(training: Training, ctx: LoopContext, measure_speed: bool) -> dict:
    """What the trial's network costs: its parameter count and (when a multi-objective search asks) its forward
    time per film on one CPU thread. Measured once per trial process, after its first epoch: the figures depend on
    the network and image size, not on the weights, so every epoch reports the same ones (a trial the time budget
    stops still has them). Timed on rank 0 only; Ray Train keeps rank 0's report."""
    model = getattr(training.model, "module", training.model)
    costs = {"param_count": sum(p.numel() for p in model.parameters())}
    if measure_speed and ctx.rank == 0:
        rows = np.sort((training.val_idx if len(training.val_idx) else training.train_idx)[:SPEED_FILMS])
        costs["cpu_ms_per_film"] = cpu_ms_per_film(model, np.asarray(training.data.pixels[rows]))
    return costs


def save_epoch(folder: Path, training: Training, epoch: int, metrics: dict) -> float:
    """The epoch's checkpoint (weights, optimizer and schedule, its report, the film preprocessing) in `folder`,
    for any runner to hand on; returns the seconds it took."""
    from tune_ct.model.checkpoint import save_checkpoint

    t = time.perf_counter()
    save_checkpoint(folder, training.model, training.optimizer, training.scheduler, training.checkpoint_meta(epoch),
                    metrics)
    return time.perf_counter() - t


def fit(config: dict, settings: TrialSettings, ctx: LoopContext) -> None:
    """The whole trial: resume from the context's checkpoint if there is one, then epoch after epoch."""
    training = setup_training(Hyperparameters.from_config(config), settings, ctx)
    start_epoch = 0
    state = ctx.restore()
    if state is not None:
        start_epoch = resume(training, state)
        if start_epoch >= training.epochs and state.last_metrics is not None:
            # Trained to the end before the search's driver died: Tune still needs this trial's final result
            # (a trial that reports nothing stops the whole search). Replay the last report with its checkpoint.
            ctx.report({**state.last_metrics, "replayed": True}, training, start_epoch)
            return
    report_seconds = 0.0  # the previous epoch's report (checkpoint upload + hand-off), logged one epoch late
    costs = None
    for epoch in range(start_epoch, training.epochs):
        metrics = run_epoch(training, settings, ctx, epoch)
        costs = costs or trial_costs(training, ctx, settings.measure_speed)
        metrics.update(costs)
        metrics["time_cache_s"] = training.cache_seconds if epoch == start_epoch else 0.0
        metrics["time_report_s"] = report_seconds
        report_seconds = ctx.report(metrics, training, epoch + 1)
