"""Stage 4: one trial. A Ray Tune function trainable that runs a Ray Train `TorchTrainer` (Train V2 API).

`tune_trial` is what Tune schedules; it only builds and fits the trainer. `train_worker` runs on each Train
worker: it memory-maps the cached train/val images (it never receives the test split), trains with AdamW and a
cosine schedule, and after every epoch validates, checkpoints and reports. Metrics reach Tune through Ray's
`TuneReportCallback`. A restarted worker group resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tune_ct.augment import Augment, augment, to_model_input
from tune_ct.files import CLASSES

CHECKPOINT_FILE = "model.pt"
TRIAL_DRIVER_CPU = 0.01  # Tune rejects 0; the trial driver only waits on the TorchTrainer
TRAIN_STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.json"  # the epoch's report, kept with its checkpoint
# Ray Train's controller collects reports and notices a finished worker group only when it polls its workers
# (Ray's default: every 2 s, up to 2 s added to every trial's end); bench/overhead.py measures the difference.
TRAIN_POLL_INTERVAL_S = "0.5"
# Ray Train settings each trial applies unless the user set them (TorchTrainer passes them to its controller).
# The preemption watcher is one more actor process per trial that only logs node drains; trials resume from
# their checkpoints through FailureConfig either way.
TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_INTERVAL_S,
                      "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@dataclass
class RunSettings:
    """What every trial of one search shares (not searched, so not in the Tune config)."""

    subset_path: str  # train/val file list; the test split is never in it
    cache_root: str
    storage_path: str
    experiment: str
    seed: int = 0
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    metric: str = "val_macro_f1"  # checkpoints are kept by this, so the best epoch's checkpoint is never deleted
    mode: str = "max"
    weights: dict[str, str] = field(default_factory=dict)  # backbone -> local weights file


def tune_trial(config: dict, run: RunSettings) -> None:
    """Tune function trainable: one Ray Train run per trial."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    context = ray.tune.get_context()
    for key, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # The trial's own driver holds TRIAL_DRIVER_CPU; the workers take the rest of their CPU share, so N trials of
    # one 1-CPU worker fit exactly on N CPUs instead of leaving the last worker waiting forever.
    resources = {"CPU": max(run.cpus_per_worker - TRIAL_DRIVER_CPU, TRIAL_DRIVER_CPU)}
    if run.gpus_per_worker:
        resources["GPU"] = run.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker=train_worker,
        train_loop_config={"hp": dict(config), "run": asdict(run)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.workers_per_trial, use_gpu=bool(run.gpus_per_worker), resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            # Same name and storage on a Tune retry, so the retried trial resumes from its own checkpoint.
            name=f"{context.get_experiment_name()}-{context.get_trial_id()}",
            storage_path=f"{run.storage_path}/train_runs",
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            # Keep the best epoch (what the search picks) and not only the newest ones.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=run.metric, checkpoint_score_order=run.mode
            ),
        ),
    )
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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for fp32. 'auto' picks what the hardware does fast."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On CPUs without AVX512-BF16/AMX, bf16 autocast is emulated and slower than fp32.
    fast_bf16 = torch.cpu._is_avx512_bf16_supported() or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if fast_bf16 else None


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights (sklearn's 'balanced'), so small classes count as much as large ones."""
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


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
    from tune_ct.models import regularization_loss

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


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch -> device. On CUDA through pinned memory: a copy from pageable memory waits for the GPU to
    finish all queued work first, so the CPU could never prepare the next batch while the GPU computes."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch


def predict(model, pixels: np.ndarray, indices: np.ndarray, batch_size: int, device, dtype) -> np.ndarray:
    """Softmax probabilities (N x 4, float32) for the given rows of a uint8 image array, in indices' order."""
    # The bare module: DDP's forward may broadcast buffers, a collective that uneven val shards would deadlock.
    model = getattr(model, "module", model)
    model.eval()
    out = np.zeros((len(indices), len(CLASSES)), dtype=np.float32)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for start in range(0, len(indices), batch_size):
            rows = indices[start : start + batch_size]
            x = to_model_input(torch.from_numpy(np.asarray(pixels[rows])).to(device))
            x = x.contiguous(memory_format=torch.channels_last)
            out[start : start + len(rows)] = torch.softmax(model(x).float(), dim=1).cpu().numpy()
    return out


def save_checkpoint(folder: Path, model, optimizer, scheduler, epoch: int, hp: dict,
                    metrics: dict | None = None) -> None:
    if metrics is not None:  # replayed when a resumed trial finds nothing left to train
        (folder / METRICS_FILE).write_text(json.dumps(metrics, default=lambda o: getattr(o, "item", lambda: str(o))()))
    inner = getattr(model, "module", model)
    torch.save(
        {"model": inner.state_dict(), "backbone": hp["backbone"], "image_size": int(hp["image_size"]),
         "classes": list(CLASSES), "hp": hp, "epoch": epoch},
        folder / CHECKPOINT_FILE,
    )
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch},
               folder / TRAIN_STATE_FILE)


def load_checkpoint_file(path: Path) -> dict:
    """Weights-only load: a checkpoint can never run code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def train_worker(loop_config: dict) -> None:
    """Ray Train worker loop: train, validate, checkpoint and report once per epoch."""
    import ray.train
    import ray.train.torch

    from tune_ct.cache import open_or_build
    # sklearn, imported here and not at the top: the trial actor and the Train controller import this module
    # too (they unpickle tune_trial / train_worker) and never need it; it was ~40% of the module's import time.
    from tune_ct.metrics import classification_metrics
    from tune_ct.models import build_model

    hp, run = loop_config["hp"], RunSettings(**loop_config["run"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, round(run.cpus_per_worker)))
    device = ray.train.torch.get_device()
    dtype = autocast_dtype(hp.get("precision", "auto"), device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one image size per trial: pick the fastest kernels once

    t0 = time.perf_counter()
    data = open_or_build(Path(run.subset_path), int(hp["image_size"]), Path(run.cache_root))
    train_idx, val_idx = data.indices("train"), data.indices("val")
    cache_seconds = time.perf_counter() - t0

    torch.manual_seed(run.seed)
    model = build_model(hp["backbone"], int(hp["image_size"]), run.weights.get(hp["backbone"]))
    model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]))
    epochs, batch_size = int(hp["epochs"]), int(hp["batch_size"])
    steps_per_epoch = max(1, math.ceil(len(train_idx) / world / batch_size))
    warmup = int(float(hp.get("warmup_epochs", 0.0)) * steps_per_epoch)
    total = epochs * steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    weight = class_weights(data.labels[train_idx]).to(device) if hp.get("class_weighting", True) else None
    aug = Augment.from_config(hp)
    labels_all = torch.from_numpy(data.labels)

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            saved = load_checkpoint_file(Path(folder) / CHECKPOINT_FILE)
            state = load_checkpoint_file(Path(folder) / TRAIN_STATE_FILE)
            last_report = Path(folder) / METRICS_FILE
            last_metrics = json.loads(last_report.read_text()) if last_report.exists() else None
        getattr(model, "module", model).load_state_dict(saved["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        if start_epoch >= epochs and last_metrics is not None:
            # Trained to the end before the search's driver died: Tune still needs this trial's final result
            # (a trial that reports nothing stops the whole search). Replay the last report with its checkpoint.
            report_epoch({**last_metrics, "replayed": True}, rank, model, optimizer, scheduler, start_epoch, hp)
            return

    generator = torch.Generator(device=device)
    report_seconds = 0.0  # the previous epoch's ray.train.report (checkpoint upload + hand-off), logged one epoch late
    for epoch in range(start_epoch, epochs):
        generator.manual_seed(run.seed * 1000 + epoch * world + rank)
        order = np.random.default_rng(run.seed * 1000 + epoch).permutation(train_idx)
        # Equal shards: under DDP every rank must run the same number of steps or the all-reduce hangs.
        order = order[: len(order) - len(order) % world][rank::world]
        t_epoch = time.perf_counter()
        loss_sum, seen, timing = train_epoch(model, optimizer, scheduler, data.pixels, labels_all, order, batch_size,
                                             aug, generator, device, dtype, weight,
                                             float(hp.get("label_smoothing", 0.0)))
        train_seconds = time.perf_counter() - t_epoch

        t = time.perf_counter()
        shard = val_idx[rank::world]
        probs = predict(model, data.pixels, shard, max(batch_size, 64), device, dtype)
        y_val = data.labels[shard]
        gathered = _gather((y_val, probs), world)
        y_true = np.concatenate([g[0] for g in gathered])
        p_all = np.concatenate([g[1] for g in gathered])
        val_loss = float(F.nll_loss(torch.log(torch.from_numpy(p_all).clamp_min(1e-8)), torch.from_numpy(y_true)))
        metrics = classification_metrics(y_true, p_all.argmax(1), prefix="val_")
        val_seconds = time.perf_counter() - t

        train_loss = sum(g for g in _gather(loss_sum, world)) / max(1, sum(_gather(seen, world)))
        metrics.update({
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": scheduler.get_last_lr()[0],
            "train_images_per_s": seen * world / max(train_seconds, 1e-9),
            "time_data_s": timing["data"],
            "time_compute_s": timing["compute"],
            "time_val_s": val_seconds,
            "time_cache_s": cache_seconds if epoch == start_epoch else 0.0,
            "time_report_s": report_seconds,
            "n_train": int(len(train_idx)),
            "n_val": int(len(val_idx)),
            "precision": str(dtype).replace("torch.", "") if dtype else "float32",
            "device": device.type,
        })
        report_seconds = report_epoch(metrics, rank, model, optimizer, scheduler, epoch + 1, hp)


def report_epoch(metrics: dict, rank: int, model, optimizer, scheduler, epoch: int, hp: dict) -> float:
    """Report an epoch to Ray Train: rank 0 with its checkpoint (the report saved beside it), other ranks without.
    Returns the seconds the report itself took (logged with the next epoch)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            t = time.perf_counter()
            save_checkpoint(Path(tmp), model, optimizer, scheduler, epoch, hp, metrics)
            metrics["time_checkpoint_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)
        return time.perf_counter() - t
