"""ONNX Runtime vs eager PyTorch on this CPU: the served model's two runtimes on the same real films.

    python bench/onnx_runtime.py --data DIR --json bench/results/onnx_runtime.json

For each model (default baseline_cnn at 128 px and resnet18 at 224 px, untrained: speed does not depend on the
weights) the network is exported and checked exactly as a registration does (tune_ct.registry.onnx_export), and
the same normalised real films go through `torch_network` (eval, no_grad) and `onnx_network` (an ONNX Runtime CPU
session), at batch 1 (one film per call) and batch 32, with 1 and 2 intra-op threads (torch.set_num_threads /
SessionOptions.intra_op_num_threads). Decoding and resizing are left out: both runtimes share them. Each round
times both runtimes on the same films, in alternating order (ABBA), after warm-up passes, so load from other
users of a shared machine hits them alike: the speed-up is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tune_ct.data.files import CLASSES, decode_file, resize
from tune_ct.model.augment import to_model_input
from tune_ct.model.networks import build_model
from tune_ct.registry.classify import Network, torch_network
from tune_ct.registry.onnx_export import export_checked, onnx_network, onnx_session


@dataclass
class Row:
    model: str
    image_size: int
    threads: int
    batch_size: int
    torch_films_s: float
    onnx_films_s: float
    torch_ms_per_film: float
    onnx_ms_per_film: float
    onnx_speedup: float  # median over rounds of torch time / ONNX Runtime time
    max_prob_diff: float


def real_films(data: Path, n: int, size: int) -> torch.Tensor:
    """n films taken in turn from the four classes, decoded, resized and normalised as predict does."""
    lists = [sorted((data / c / "images").iterdir()) for c in CLASSES]
    files = [lists[i % len(CLASSES)][i // len(CLASSES)] for i in range(n)]
    return to_model_input(torch.from_numpy(np.stack([resize(decode_file(f)[0], size) for f in files])))


def run_all(network: Network, x: torch.Tensor, batch: int) -> None:
    for start in range(0, len(x), batch):
        network(x[start : start + batch])


def timed(network: Network, x: torch.Tensor, batch: int) -> float:
    started = time.perf_counter()
    run_all(network, x, batch)
    return time.perf_counter() - started


def compare(ours: Network, theirs: Network, x: torch.Tensor, batch: int, rounds: int, warmup: int) -> dict:
    for _ in range(warmup):
        run_all(ours, x, batch)
        run_all(theirs, x, batch)
    t_torch, t_onnx = [], []
    for r in range(rounds):
        pair = (ours, theirs) if r % 2 == 0 else (theirs, ours)  # ABBA: neither always runs first
        first, second = timed(pair[0], x, batch), timed(pair[1], x, batch)
        t_torch.append(first if r % 2 == 0 else second)
        t_onnx.append(second if r % 2 == 0 else first)
    med_torch, med_onnx = statistics.median(t_torch), statistics.median(t_onnx)
    return {"torch_films_s": len(x) / med_torch, "onnx_films_s": len(x) / med_onnx,
            "torch_ms_per_film": 1000 * med_torch / len(x), "onnx_ms_per_film": 1000 * med_onnx / len(x),
            "onnx_speedup": statistics.median(a / b for a, b in zip(t_torch, t_onnx))}


def bench_model(backbone: str, size: int, args, tmp: Path) -> list[Row]:
    torch.manual_seed(0)
    model = build_model(backbone, size).eval()
    x = real_films(args.data, args.films, size)
    check = export_checked(model, x[:8], tmp)
    if check.path is None:
        raise SystemExit(f"{backbone} @ {size}: {check.tag}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        ours, theirs = torch_network(model), onnx_network(onnx_session(check.path, threads))
        for batch in args.batches:
            got = compare(ours, theirs, x, batch, args.rounds, args.warmup)
            rows.append(Row(backbone, size, threads, batch, **got, max_prob_diff=check.max_diff))
            print(f"{backbone:>12} {size:>3}px  {threads} thr  batch {batch:>2}:  torch {got['torch_films_s']:7.1f} "
                  f"films/s ({got['torch_ms_per_film']:6.2f} ms)  onnxruntime {got['onnx_films_s']:7.1f} films/s "
                  f"({got['onnx_ms_per_film']:6.2f} ms)  speed-up x{got['onnx_speedup']:.2f}", flush=True)
    return rows


def machine() -> dict:
    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    import onnxruntime

    return {"cpu": model_name, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "avx512f": "avx512f" in flags, "amx_bf16": "amx_bf16" in flags, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=os.environ.get("TUNE_CT_DATA"), help="dataset folder")
    p.add_argument("--models", nargs="+", default=["baseline_cnn:128", "resnet18:224"], help="BACKBONE:SIZE")
    p.add_argument("--films", type=int, default=32, help="real films per timed pass (a multiple of the batch)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=7, help="timed passes per runtime")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes per runtime first")
    p.add_argument("--json", type=Path, help="write rows and machine here")
    args = p.parse_args(argv)
    if not args.data:
        p.error("pass --data DIR or set TUNE_CT_DATA")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    info = {**machine(), "load_average_start": os.getloadavg()[0]}  # other users of a shared machine
    print(json.dumps(info))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            backbone, size = spec.rsplit(":", 1)
            rows += bench_model(backbone, int(size), args, Path(tmp))
    info["load_average_end"] = os.getloadavg()[0]
    print(f"load average {info['load_average_start']:.1f} at the start, {info['load_average_end']:.1f} at the end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "date": time.strftime("%Y-%m-%d"),
                                         "rows": [asdict(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
