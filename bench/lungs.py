"""Lung segmenter benchmark on the shared set: train on its mask pairs, then crop films of every class.

    python bench/lungs.py --data ../shared/data/COVID-19_Radiography_Dataset [--epochs 5] [--limit N] \
        [--size 128] [--per-class 500] [--threads 1] [--save lungs.pt | --load lungs.pt] [--json results.json]

Reports held-out Dice (with the all-lung and average-mask baselines), training seconds, prediction films/s, and
per class the share of fallback boxes (no usable lungs found: the whole film is kept) and the mean box area.
COVID and Normal have no masks, so their figures show how the segmenter does on films it never saw the like of;
for Lung_Opacity / Viral Pneumonia the Dice against their own masks is split into films it did not / did train on.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from tune_ct.data.files import CLASSES, decode_file, scan
from tune_ct.model import lungs
from machine import cpu_model  # bench/machine.py (the script's folder is on sys.path)


def mean_or_none(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None  # JSON has no NaN


def train(args, root: Path, images: list[str]) -> tuple[lungs.LungNet, dict, set[str], list[tuple[str, str]]]:
    pairs = lungs.find_mask_pairs(root, images)
    random.Random(args.seed).shuffle(pairs)  # --limit then takes a mix of both masked classes
    pairs = pairs[: args.limit] if args.limit else pairs
    start = time.perf_counter()
    loaded = lungs.load_pairs(root, pairs, args.size)
    load_s = time.perf_counter() - start
    model, report = lungs.train_segmenter(loaded, args.epochs, args.seed, batch_size=args.batch_size,
                                          threads=args.threads, size=args.size)
    train_idx, _ = lungs.split_pairs(len(pairs), 0.15, args.seed)  # the split train_segmenter made
    report["load_seconds"] = round(load_s, 2)
    return model, report, {pairs[i][0] for i in train_idx}, pairs


def reload(args, root: Path, images: list[str]) -> tuple[lungs.LungNet, dict, set[str], list[tuple[str, str]]]:
    """A segmenter this script saved: its training set is rebuilt from the same shuffle and split."""
    model, report = lungs.load_segmenter(Path(args.load))
    torch.set_num_threads(args.threads)
    pairs = lungs.find_mask_pairs(root, images)
    random.Random(report.get("seed", args.seed)).shuffle(pairs)
    pairs = pairs[: args.limit] if args.limit else pairs
    train_idx, _ = lungs.split_pairs(len(pairs), 0.15, report.get("seed", args.seed))
    return model, report, {pairs[i][0] for i in train_idx}, pairs


def per_class(args, root: Path, model, scanned, trained: set[str]) -> tuple[dict, dict]:
    rng = random.Random(args.seed + 1)
    chosen = {c: sorted(rng.sample([r for r, label in scanned if label == c],
                                   min(args.per_class, sum(1 for _, label in scanned if label == c))))
              for c in CLASSES}
    films = {c: [decode_file(root / r)[0] for r in rels] for c, rels in chosen.items()}  # native size (224)
    everything = [f for c in CLASSES for f in films[c]]
    lungs.predict_masks(model, everything[:64])  # warm-up: first-call allocation is not throughput
    start, cpu = time.perf_counter(), time.process_time()  # CPU time too: a shared machine skews wall time
    masks = lungs.predict_masks(model, everything, batch_size=args.predict_batch)
    predict_s, predict_cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    boxes = [lungs.lung_box(m) for m in masks]
    box_s = time.perf_counter() - start
    out, at = {}, 0
    for c in CLASSES:
        n = len(films[c])
        cm, cb = masks[at:at + n], boxes[at:at + n]
        row = {"films": n, "fallback_share": round(float(np.mean([b.fallback for b in cb])), 4),
               "mean_box_area_share": round(float(np.mean([b.area_share for b in cb])), 4),
               "mean_box_area_share_found": mean_or_none([b.area_share for b in cb if not b.fallback]),
               "mean_mask_share": round(float(np.mean([m.mean() for m in cm])), 4)}
        row.update(mask_dice(root, chosen[c], cm, trained))
        out[c] = row
        at += n
    speed = {"films": len(everything), "predict_seconds": round(predict_s, 2),
             "predict_films_per_s": round(len(everything) / predict_s, 1),
             "predict_cpu_seconds": round(predict_cpu, 2), "batch_size": args.predict_batch,
             "predict_films_per_cpu_s": round(len(everything) / predict_cpu, 1),
             "lung_box_films_per_s": round(len(everything) / box_s, 1)}
    return out, speed


def mask_dice(root: Path, rels: list[str], preds: list[np.ndarray], trained: set[str]) -> dict:
    """Dice against the film's own mask where it has one, split by whether the segmenter trained on it."""
    found = dict(lungs.find_mask_pairs(root, rels))
    scores: dict[str, list[float]] = {"not_trained": [], "train": []}
    for rel, pred in zip(rels, preds):
        if rel in found:
            truth = decode_file(root / found[rel])[0] >= lungs.MASK_THRESHOLD
            truth = lungs._resize_mask(truth, *pred.shape)
            scores["train" if rel in trained else "not_trained"].append(lungs.dice(pred, truth))
    return {f"dice_{k}": mean_or_none(v) for k, v in scores.items()} | {
        f"n_{k}": len(v) for k, v in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--limit", type=int, default=0, help="at most this many mask pairs (0: all)")
    ap.add_argument("--size", type=int, default=lungs.SEGMENT_SIZE)
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--predict-batch", type=int, default=16)
    ap.add_argument("--save", help="also save the segmenter here")
    ap.add_argument("--load", help="skip training: measure this saved segmenter (trained by this script)")
    ap.add_argument("--json", help="write the summary here too")
    args = ap.parse_args()
    root = Path(args.data).resolve()
    scanned = scan(root).images
    if args.load:
        model, report, trained, pairs = reload(args, root, [r for r, _ in scanned])
    else:
        model, report, trained, pairs = train(args, root, [r for r, _ in scanned])
    classes, speed = per_class(args, root, model, scanned, trained)
    summary = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "mask_pairs": len(pairs), "training": report, "prediction": speed, "per_class": classes,
               "parameters": sum(p.numel() for p in model.parameters())}
    if args.save:
        lungs.save_segmenter(Path(args.save), model, report)
        summary["segmenter_id"] = lungs.segmenter_id(Path(args.save))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
