"""Data-layer benchmark on the shared set: cache build speed, an epoch from the cache vs a naive PIL loader,
and the phash distance distributions behind the near-duplicate threshold.

    python bench/data.py --data ../shared/data/COVID-19_Radiography_Dataset --sources ../shared/data/sources.csv \
        [--workdir /tmp/tune_ct_bench] [--json results.json]

All timings come from one run on one machine, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import imagehash
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from tune_ct.commands.common import console_logging
from tune_ct.data import manifest as mf
from tune_ct.data.cache import open_or_build
from tune_ct.data.files import CLASSES
from tune_ct.data.prepare import DataSettings, prepare
from tune_ct.data.subsets import write_subset
from tune_ct.data.workdir import WorkFolder
from tune_ct.train.loop import batches

BATCH = 64


class NaivePngDataset(Dataset):
    """How the seed notebooks loaded: open, decode and resize one PNG per item, every epoch."""

    def __init__(self, root: Path, entries, size: int):
        self.items = [(root / e.file, CLASSES.index(e.label)) for e in entries]
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("L").resize((self.size, self.size), Image.BILINEAR))
        return torch.from_numpy(pixels.copy()).float().div_(255.0).unsqueeze(0), label


def epoch_naive(root: Path, entries, size: int, workers: int) -> tuple[float, int]:
    loader = DataLoader(NaivePngDataset(root, entries, size), batch_size=BATCH, shuffle=True, drop_last=True,
                        num_workers=workers, generator=torch.Generator().manual_seed(0))
    started, seen = time.perf_counter(), 0
    for x, y in loader:
        seen += len(y)
    return time.perf_counter() - started, seen


def epoch_cache(pixels: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """As the trial's loop reads (tune_ct.train.loop.batches): a permutation cut into batches, each sorted, sliced
    from the memmap."""
    order = np.random.default_rng(0).permutation(len(pixels))
    labels_t = torch.from_numpy(labels)
    started, seen = time.perf_counter(), 0
    for rows in batches(order, BATCH, drop_last=True):
        _x = torch.from_numpy(np.asarray(pixels[rows])).float().div_(255.0).unsqueeze(1)  # the work measured
        y = labels_t[rows]
        seen += len(y)
    return time.perf_counter() - started, seen


def pair_histograms(hashes: np.ndarray, labels: np.ndarray, bits: int, chunk: int = 512) -> dict[str, np.ndarray]:
    """Counts of Hamming distances over all unordered pairs, split into same-class and cross-class pairs."""
    same = np.zeros(bits + 1, dtype=np.int64)
    cross = np.zeros(bits + 1, dtype=np.int64)
    n = len(hashes)
    for start in range(0, n, chunk):
        block = hashes[start : start + chunk]
        dist = np.bitwise_count(block[:, None, :] ^ hashes[None, :, :]).sum(axis=2, dtype=np.int32)
        i = np.arange(start, min(n, start + chunk))[:, None]
        upper = np.arange(n)[None, :] > i  # each pair once
        same_class = labels[start : start + chunk, None] == labels[None, :]
        same += np.bincount(dist[upper & same_class], minlength=bits + 1)
        cross += np.bincount(dist[upper & ~same_class], minlength=bits + 1)
    return {"same": same, "cross": cross}


def as_words(hexes: list[str]) -> np.ndarray:
    return np.array([np.frombuffer(bytes.fromhex(h), dtype=">u8") for h in hexes]).astype(np.uint64)


def synthetic_copies(img: Image.Image) -> dict[str, Image.Image]:
    """Copies a collection plausibly holds of one film: re-encoded, rescaled, brightness/contrast-shifted."""
    import io

    def jpeg(quality: int) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("L")

    a = np.asarray(img).astype(np.float32)
    return {
        "jpeg q70": jpeg(70),
        "jpeg q40": jpeg(40),
        "resize 299": img.resize((299, 299), Image.BICUBIC),
        "resize 160": img.resize((160, 160), Image.BILINEAR),
        "brightness +18": Image.fromarray(np.clip(a + 18, 0, 255).astype(np.uint8)),
        "contrast x1.15": Image.fromarray(np.clip((a - 128) * 1.15 + 128, 0, 255).astype(np.uint8)),
    }


def threshold_study(manifest: mf.Manifest, pixels: np.ndarray, files: list[str], samples: int) -> dict:
    entries = sorted(manifest.entries, key=lambda e: e.file)
    labels = np.array([CLASSES.index(e.label) for e in entries])
    out: dict = {"near_duplicate_bits": manifest.near_duplicate_bits}
    started = time.perf_counter()
    h256 = pair_histograms(as_words([e.phash for e in entries]), labels, 256)
    row_of = {f: i for i, f in enumerate(files)}
    # 64-bit hashes from the cached 224 px pixels (the shared set is stored at 224, so this is the same picture).
    h64_hex = [str(imagehash.phash(Image.fromarray(np.asarray(pixels[row_of[e.file]])), hash_size=8)) for e in entries]
    h64 = pair_histograms(as_words(h64_hex), labels, 64)
    out["pairs_seconds"] = round(time.perf_counter() - started, 1)
    for name, hist, thr in (("phash256", h256, manifest.near_duplicate_bits), ("phash64", h64, None)):
        cross_min = int(np.nonzero(hist["cross"])[0][0])
        out[name] = {
            "same_class_pairs": int(hist["same"].sum()), "cross_class_pairs": int(hist["cross"].sum()),
            "cross_class_min_distance": cross_min,
            "same_class_pairs_at_or_below": {d: int(hist["same"][: d + 1].sum()) for d in (6, 16, 28, 36, 43)
                                             if d <= len(hist["same"]) - 1},
            "cross_class_pairs_at_or_below": {d: int(hist["cross"][: d + 1].sum()) for d in (6, 16, 28, 36, 43, 50)
                                              if d <= len(hist["cross"]) - 1},
        }
        if thr is not None:
            out[name]["cross_class_pairs_at_or_below_threshold"] = int(hist["cross"][: thr + 1].sum())
    rng = np.random.default_rng(0)
    chosen = [entries[i] for i in rng.choice(len(entries), size=min(samples, len(entries)), replace=False)]
    dists: dict[str, list[int]] = {}
    for e in chosen:
        img = Image.fromarray(np.asarray(pixels[row_of[e.file]]))
        base = imagehash.phash(img, hash_size=mf.PHASH_SIZE)
        for kind, copy in synthetic_copies(img).items():
            dists.setdefault(kind, []).append(int(base - imagehash.phash(copy, hash_size=mf.PHASH_SIZE)))
    out["synthetic_copies"] = {k: {"n": len(v), "median": float(np.median(v)), "p99": float(np.percentile(v, 99)),
                                   "max": int(max(v))} for k, v in dists.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--sources", type=Path)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tune_ct_bench"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="cache build threads and loader workers")
    ap.add_argument("--synthetic", type=int, default=300, help="films to make synthetic copies of")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the loaders, not torch ops, are measured

    console_logging()  # tune_ct logs its progress (hashing, splits) through `logging`: show it on stderr
    work = WorkFolder(args.workdir.resolve())
    prep = prepare(DataSettings(data=args.data, work=work, sources=args.sources))
    m = prep.manifest
    result: dict = {
        "date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "images": len(m.entries),
        "manifest_seconds": round(prep.seconds, 1),
    }
    # Every usable image (all splits): the same files for both loaders.
    subset = work.subset(f"{m.hash}.bench-all")
    write_subset(subset, prep.root, m.entries, m.hash)
    cache_root = work.root / "bench-cache"
    shutil.rmtree(cache_root, ignore_errors=True)
    started = time.perf_counter()
    cached = open_or_build(subset, args.size, cache_root, workers=args.workers)
    build = time.perf_counter() - started
    result["cache_build_seconds"] = round(build, 2)
    result["cache_build_images_per_s"] = round(len(cached.files) / build, 1)
    result["cache_bytes"] = int(cached.pixels.nbytes)

    entries = {e.file: e for e in m.entries}
    ordered = [entries[f] for f in cached.files]
    t_cache, n_cache = epoch_cache(cached.pixels, cached.labels)
    result["epoch_cache_seconds"] = round(t_cache, 3)
    result["epoch_cache_images_per_s"] = round(n_cache / t_cache, 1)
    for workers in sorted({0, args.workers}):
        t, n = epoch_naive(prep.root, ordered, args.size, workers)
        result[f"epoch_naive_pil_workers{workers}_seconds"] = round(t, 2)
        result[f"epoch_naive_pil_workers{workers}_images_per_s"] = round(n / t, 1)
        result[f"speedup_cache_vs_naive_workers{workers}"] = round(t / t_cache, 1)
    print(json.dumps(result, indent=1), flush=True)

    result["threshold"] = threshold_study(m, cached.pixels, cached.files, args.synthetic)
    print(json.dumps(result["threshold"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
