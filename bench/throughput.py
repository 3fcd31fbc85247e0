"""Training throughput: tune_ct's trial step vs a bare PyTorch loop on the same cached uint8 tensors, and the bare
loop's achieved GFLOP/s vs this machine's measured fp32 matmul ceiling.

    python bench/throughput.py --data DIR --workdir WD --json bench/results/throughput.json
    python bench/throughput.py --device cuda --models resnet18 --sizes 224 --batch-size 64 ...   # on a GPU

Every variant runs in the same process, interleaved round by round (bare, bare channels_last, tune_ct, matmul),
so load from other users of a shared machine hits them alike; compare the ratios, not the absolute numbers.
Variants:
  bare            uint8 memmap rows -> float / 255 -> model -> cross-entropy -> AdamW (no augmentation)
  bare_cl         the same with model and input in channels_last (what the trial uses)
  tune_ct         tune_ct.train.loop.train_epoch on what tune_ct.train.loop.setup_training builds for a trial:
                  the trial's exact step and set-up (batch augmentation, channels_last, class weights, AdamW,
                  the warm-up + cosine schedule, autocast per `precision: auto`)
On CUDA every variant uses the autocast dtype `precision: auto` picks (mixed precision), copies batches through
pinned memory, and is timed between two synchronisations; GPU utilisation is sampled through NVML while it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tune_ct.data.cache import open_or_build
from tune_ct.data.prepare import DataSettings, prepare
from tune_ct.data.workdir import WorkFolder
from tune_ct.model.inference import autocast_dtype, to_device
from tune_ct.model.networks import build_model
from tune_ct.train.hyperparameters import Hyperparameters
from tune_ct.train.loop import LoopContext, Training, setup_training, train_epoch
from tune_ct.train.settings import TrialSettings

# The trial's augmentation at the middle of cpu_quick.yaml's ranges, as a trial's config holds it.
AUG_CONFIG = {"aug_rotation_deg": 5.0, "aug_crop_scale_min": 0.85, "aug_brightness": 0.075, "aug_contrast": 0.1}
AUG = Hyperparameters.from_config(AUG_CONFIG).augment
LR, WEIGHT_DECAY = 1e-3, 1e-4  # every variant's AdamW


@dataclass
class Row:
    model: str
    image_size: int
    batch_size: int
    threads: int
    bare_img_s: float
    bare_cl_img_s: float
    tune_ct_img_s: float
    tune_ct_vs_bare: float  # median over rounds of the per-round ratio
    tune_ct_vs_bare_cl: float
    tune_ct_data_share: float  # share of tune_ct's step time spent reading + augmenting the batch
    gflop_per_image: float  # forward + backward, counted by FlopCounterMode
    bare_gflop_s: float
    matmul_gflop_s: float  # best of the rounds
    bare_share_of_ceiling: float
    tune_ct_precision: str
    device: str = "cpu"
    bare_gpu_util: float | None = None  # mean NVML utilisation (%) while the variant ran, CUDA only
    tune_ct_gpu_util: float | None = None
    seconds_per_epoch_full_train: float | None = None  # 6,616 train images (the full dev set's split) / tune_ct img/s


FULL_TRAIN_IMAGES = 6616  # the shared dev set's train split


class GpuUtil:
    """Mean GPU utilisation over a `with` block, sampled through NVML every 50 ms (None without NVML)."""

    def __init__(self, device: torch.device):
        self.handle, self.samples, self.value = None, [], None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
                self.nvml = pynvml
            except Exception as err:  # NVML missing: utilisation is simply not reported
                print(f"  (no GPU utilisation: {err})")

    def __enter__(self):
        self.stop = threading.Event()
        if self.handle is not None:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.05):
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

    def __exit__(self, *exc):
        self.stop.set()
        if self.handle is not None:
            self.thread.join()
            self.value = round(statistics.mean(self.samples), 1) if self.samples else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflop_s(device: torch.device, dtype: torch.dtype | None, reps: int = 6) -> float:
    """Matmul ceiling: best of `reps` (the least disturbed by other users). CPU: fp32 1024^2 with the current
    thread count; CUDA: 8192^2 in the autocast dtype the variants use."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    b = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    a @ b
    best = math.inf
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def train_flops_per_image(model: torch.nn.Module, size: int, batch: int) -> float:
    batch = min(batch, 4)  # FLOPs per image do not depend on the batch; counted on the CPU
    x = torch.randn(batch, 1, size, size)
    y = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def trial_training(run: TrialSettings, name: str, size: int, batch_size: int, steps: int, n_train: int,
                   device: torch.device, precision: str = "auto") -> Training:
    """Model, optimizer, schedule, class weights and autocast dtype exactly as a trial of this model gets them
    (tune_ct.train.loop.setup_training), with as many epochs of `n_train` images as it takes for the schedule to
    span `steps` batches."""
    epochs = max(1, math.ceil(steps / max(1, math.ceil(n_train / batch_size))))
    hp = {"backbone": name, "image_size": size, "lr": LR, "weight_decay": WEIGHT_DECAY, "batch_size": batch_size,
          "epochs": epochs, "precision": precision, **AUG_CONFIG}
    ctx = LoopContext(rank=0, world_size=1, device=device, prepare_model=lambda model: model.to(device),
                      report=lambda *_: 0.0, restore=lambda: None)
    return setup_training(Hyperparameters.from_config(hp), run, ctx)


def trial_epoch(t: Training, pixels, labels, order, batch_size: int, generator, device: torch.device):
    """tune_ct.train.loop.train_epoch with the trial's own set-up."""
    return train_epoch(t.model, t.optimizer, t.scheduler, pixels, labels, order, batch_size, AUG, generator, device,
                       t.dtype, t.class_weight)


def bare_steps(model, optimizer, pixels, labels, order, batch_size, channels_last: bool,
               device: torch.device, dtype: torch.dtype | None) -> tuple[int, float]:
    """The plain loop: no augmentation, no schedule, no class weights."""
    model.train()
    sync(device)
    seen, t = 0, time.perf_counter()
    for start in range(0, len(order) - batch_size + 1, batch_size):
        rows = np.sort(order[start : start + batch_size])
        x = to_device(torch.from_numpy(np.asarray(pixels[rows])), device).unsqueeze(1).float().div_(255.0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), to_device(labels[rows], device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(rows)
    sync(device)
    return seen, time.perf_counter() - t


def measure(name: str, size: int, pixels, labels, train_idx, batch_size: int, steps: int, rounds: int,
            threads: int, device: torch.device, run: TrialSettings) -> Row:
    dtype = autocast_dtype("auto", device)

    def fresh(channels_last: bool):
        torch.manual_seed(0)
        model = build_model(name, size).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    warm_steps = 3 if device.type == "cuda" else 1
    bare, bare_opt = fresh(False)
    bare_cl, bare_cl_opt = fresh(True)
    tct = trial_training(run, name, size, batch_size, warm_steps + rounds * steps, len(train_idx), device)
    flops = train_flops_per_image(build_model(name, size), size, batch_size)
    gen = torch.Generator(device=device).manual_seed(0)
    rng = np.random.default_rng(0)
    n = steps * batch_size
    # Warm-up steps (allocator, oneDNN / cuDNN algorithm choice) before any timing.
    warm = np.resize(rng.permutation(train_idx), batch_size * warm_steps)
    bare_steps(bare, bare_opt, pixels, labels, warm, batch_size, False, device, dtype)
    bare_steps(bare_cl, bare_cl_opt, pixels, labels, warm, batch_size, True, device, dtype)
    trial_epoch(tct, pixels, labels, warm, batch_size, gen, device)

    speed = {"bare": [], "bare_cl": [], "tune_ct": []}
    util = {"bare": [], "tune_ct": []}
    data_share, ceilings = [], []
    for _ in range(rounds):
        order = np.resize(rng.permutation(train_idx), n)  # repeats rows when the subset is smaller than n
        with GpuUtil(device) as gpu:
            seen, sec = bare_steps(bare, bare_opt, pixels, labels, order, batch_size, False, device, dtype)
        speed["bare"].append(seen / sec)
        util["bare"].append(gpu.value)
        seen, sec = bare_steps(bare_cl, bare_cl_opt, pixels, labels, order, batch_size, True, device, dtype)
        speed["bare_cl"].append(seen / sec)
        with GpuUtil(device) as gpu:
            sync(device)
            t = time.perf_counter()
            _, seen, timing = trial_epoch(tct, pixels, labels, order, batch_size, gen, device)
            sync(device)
            speed["tune_ct"].append(seen / (time.perf_counter() - t))
        util["tune_ct"].append(gpu.value)
        data_share.append(timing["data"] / max(1e-9, timing["data"] + timing["compute"]))
        ceilings.append(matmul_gflop_s(device, dtype))
        print(f"  {name}@{size}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in speed.items()) + " img/s", flush=True)

    med = {k: statistics.median(v) for k, v in speed.items()}
    ratio = statistics.median(t / b for t, b in zip(speed["tune_ct"], speed["bare"]))
    ratio_cl = statistics.median(t / b for t, b in zip(speed["tune_ct"], speed["bare_cl"]))
    ceiling = max(ceilings)
    gflop_s = med["bare"] * flops / 1e9
    return Row(name, size, batch_size, threads, round(med["bare"], 1), round(med["bare_cl"], 1),
               round(med["tune_ct"], 1), round(ratio, 3), round(ratio_cl, 3), round(statistics.median(data_share), 3),
               round(flops / 1e9, 4), round(gflop_s, 1), round(ceiling, 1), round(gflop_s / ceiling, 3),
               str(tct.dtype).replace("torch.", "") if tct.dtype else "float32", device.type, mean_util(util["bare"]),
               mean_util(util["tune_ct"]), round(FULL_TRAIN_IMAGES / med["tune_ct"], 2))


def mean_util(values) -> float | None:
    """Mean of the rounds' GPU utilisation samples (None on CPU or without NVML)."""
    values = [v for v in values if v is not None]
    return round(statistics.mean(values), 1) if values else None


def bf16_vs_fp32(name: str, size: int, pixels, labels, train_idx, batch_size: int, steps: int,
                 rounds: int, device: torch.device, run: TrialSettings) -> dict:
    """The trial step with autocast bf16 vs fp32 (`precision: bf16` / `fp32`), interleaved: justifies
    `precision: auto` on this device."""
    out = {"bf16": [], "fp32": []}
    trainings = {key: trial_training(run, name, size, batch_size, (rounds + 1) * steps, len(train_idx), device,
                                     precision=key)
                 for key in out}
    gen, rng = torch.Generator(device=device).manual_seed(0), np.random.default_rng(1)
    for r in range(rounds + 1):  # round 0 is warm-up
        order = np.resize(rng.permutation(train_idx), steps * batch_size)
        for key, training in trainings.items():
            sync(device)
            t = time.perf_counter()
            _, seen, _ = trial_epoch(training, pixels, labels, order, batch_size, gen, device)
            sync(device)
            if r:
                out[key].append(seen / (time.perf_counter() - t))
    ratio = statistics.median(b / f for b, f in zip(out["bf16"], out["fp32"]))
    return {"model": name, "image_size": size, "bf16_img_s": round(statistics.median(out["bf16"]), 1),
            "fp32_img_s": round(statistics.median(out["fp32"]), 1), "bf16_vs_fp32": round(ratio, 3),
            "device": device.type, "cpu_has_avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
            "auto_picks": str(autocast_dtype("auto", device))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--workdir", type=Path, required=True, help="manifest + caches (reused between runs)")
    p.add_argument("--limit-per-class", type=int, default=300)
    p.add_argument("--models", nargs="+", default=["baseline_cnn", "resnet18"])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="training steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a 1-CPU trial worker uses 1)")
    p.add_argument("--bf16-check", default="resnet18:64", help="MODEL:SIZE for the bf16 vs fp32 check ('' to skip)")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.set_num_threads(args.threads)
    work = WorkFolder(args.workdir.resolve())
    prep = prepare(DataSettings(data=args.data, work=work, limit_per_class=args.limit_per_class))
    # What every trial of a search shares; the tune_ct variant's set-up reads its caches from here.
    run = TrialSettings(subset_path=str(prep.trainval_path), cache_root=str(work.cache),
                        storage_path=str(work.root), experiment="bench-throughput", cpus_per_worker=args.threads)
    rows, caches = [], {}
    for size in args.sizes:
        caches[size] = open_or_build(prep.trainval_path, size, work.cache)
    for size in args.sizes:
        data = caches[size]
        labels, train_idx = torch.from_numpy(data.labels), data.indices("train")
        for name in args.models:
            rows.append(measure(name, size, data.pixels, labels, train_idx, args.batch_size, args.steps,
                                args.rounds, args.threads, device, run))
            print(json.dumps(asdict(rows[-1])), flush=True)
    bf16 = None
    if args.bf16_check:
        name, size = args.bf16_check.split(":")
        data = caches.get(int(size)) or open_or_build(prep.trainval_path, int(size), work.cache)
        bf16 = bf16_vs_fp32(name, int(size), data.pixels, torch.from_numpy(data.labels), data.indices("train"),
                            args.batch_size, max(2, args.steps // 2), args.rounds, device, run)
        print(json.dumps(bf16), flush=True)
    machine = platform.processor() or platform.machine()
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)} + {machine}"
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine, "device": device.type,
           "torch": torch.__version__, "threads": args.threads, "limit_per_class": args.limit_per_class,
           "rows": [asdict(r) for r in rows], "bf16_vs_fp32": bf16}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    print(f"\n{'model':<13}{'px':>5}{'bare':>9}{'bare_cl':>9}{'tune_ct':>9}{'ratio':>7}{'GFLOP/s':>9}{'ceil':>7}")
    for r in rows:
        print(f"{r.model:<13}{r.image_size:>5}{r.bare_img_s:>9}{r.bare_cl_img_s:>9}{r.tune_ct_img_s:>9}"
              f"{r.tune_ct_vs_bare:>7}{r.bare_gflop_s:>9}{r.matmul_gflop_s:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
