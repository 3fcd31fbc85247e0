"""Levers for other hospitals, measured straight: one fixed recipe, each lever switched on alone, several seeds,
scored on the dev set's locked test split and on external_dev's origins, which no run trains on.

    python bench/generalise.py --data ../shared/data/COVID-19_Radiography_Dataset \
        --sources ../shared/data/sources.csv --external ../shared/data/external_dev --out /tmp/generalise \
        [--variants base acq pct ...] [--seeds 0 1 2] [--json bench/results/generalise.json]

The recipe is the `cpu_quick` champion (resnet10t, 64 px, 4 epochs, lr 3e-3, wd 3.9e-4, rotation 5.7 deg, crop
>= 0.98, batch 64). Each run is the product's own training loop (tune_ct.train.loop.fit, in this process, no Ray)
on the locked train/val split, keeping the epoch with the best val macro-F1 as the product does, then the
product's evaluation: locked test split (dev set), and external_dev origins through `score_external` (macro-F1
over the classes each set has, 95% bootstrap CI).

The issue's protocol, two directions: (a) select on hannover-mhh + openist (COVID / Normal), report on
covid-cxnet + nih-cxr14 (COVID / Normal / Lung_Opacity); (b) the other way round. A lever is chosen on the
selection sets' mean over seeds, and the chosen lever's report-set figure is the direction's result; the
protocol's figure is the mean of the two directions. Comparisons are paired by seed (same seed, same split, same
films): mean difference and a t interval over seeds.

`plus_<origin>` variants add that external_dev origin to training (a collection, as `--data` adds one); such a
run is scored only on origins it did not train on. A finished run (its JSON under --out) is not run again.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_model  # bench/machine.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = {"backbone": "resnet10t", "image_size": 64, "epochs": 4, "batch_size": 64, "lr": 3.0e-3,
          "weight_decay": 3.9e-4, "aug_rotation_deg": 5.7, "aug_crop_scale_min": 0.98}
ACQ = {"aug_gamma": 0.4, "aug_blur": 0.5, "aug_noise": 0.03}
VARIANTS = {
    "base": {}, "acq": ACQ, "zscore": {"film_norm": "zscore"}, "pct": {"film_norm": "percentile"},
    "bnrc": {"bn_recalibrate": True}, "clahe": {"equalize": "clahe"}, "acq_pct": {**ACQ, "film_norm": "percentile"},
    "acq_pct_bnrc": {**ACQ, "film_norm": "percentile", "bn_recalibrate": True},
    "clahe_zscore": {"equalize": "clahe", "film_norm": "zscore"}, "clahe_acq": {**ACQ, "equalize": "clahe"},
    "gn": {"norm_layer": "group"}, "clahe_gn": {"equalize": "clahe", "norm_layer": "group"},
    "clahe_acq_gn": {**ACQ, "equalize": "clahe", "norm_layer": "group"},
    "ep8": {"epochs": 8}, "clahe_acq_ep8": {**ACQ, "equalize": "clahe", "epochs": 8},
    "crop": {"lung_crop": True},
    "clahe_acq_crop_ep8": {**ACQ, "equalize": "clahe", "lung_crop": True, "epochs": 8},
    "clahe_zscore_ep8": {"equalize": "clahe", "film_norm": "zscore", "epochs": 8},
    "clahe_gn_ep8": {"equalize": "clahe", "norm_layer": "group", "epochs": 8},
    # ImageNet weights (bench/lite0_weights.py; pass --weights efficientnet_lite0=FILE), fine-tuned at a lower lr
    "lite0_clahe_acq_ep8": {**ACQ, "equalize": "clahe", "epochs": 8, "backbone": "efficientnet_lite0", "lr": 1.0e-3},
    "plus_openist": {}, "plus_nih-cxr14": {}, "plus_hannover-mhh": {}, "plus_covid-cxnet": {},
}
SETS = {"A": ("hannover-mhh", "openist"), "B": ("covid-cxnet", "nih-cxr14")}  # (a): select A, report B
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}


def labels_of(external: Path, origins: tuple[str, ...], out: Path) -> Path:
    """external_dev's labels.csv restricted to some origins."""
    with (external / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["origin"] in origins]
    path = out / f"labels-{'+'.join(origins)}.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "origin"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def prepared(args, variant: str):
    """The locked train/val list the runs train on: the dev set, plus one external origin for plus_*."""
    from tune_ct.data.collections import Collection
    from tune_ct.data.prepare import DataSettings, prepare
    from tune_ct.data.workdir import WorkFolder

    more = ()
    if variant.startswith("plus_"):
        origin = variant[len("plus_"):]
        more = (Collection(args.external.resolve(), "external_dev", labels=args.external / "labels.csv",
                           origins=(origin,)),)
    settings = DataSettings(args.data, WorkFolder(args.out / "work"), sources=args.sources, more=more)
    return prepare(settings), settings


def train(args, variant: str, seed: int, prep, folder: Path) -> tuple[Path, float]:
    """The product's loop: the best val epoch's checkpoint (kept in folder/best) and its val macro-F1."""
    import torch

    from tune_ct.train.loop import LoopContext, fit, save_epoch
    from tune_ct.train.settings import TrialSettings

    best = {"value": -1.0}

    def report(metrics: dict, training, epoch: int) -> float:
        if metrics["val_macro_f1"] > best["value"]:
            best.update(value=metrics["val_macro_f1"], epoch=epoch)
            (folder / "best").mkdir(parents=True, exist_ok=True)
            save_epoch(folder / "best", training, epoch, metrics)
        return 0.0

    settings = TrialSettings(str(prep.trainval_path), str(args.out / "work" / "cache"), str(folder), variant,
                             seed=seed, cpus_per_worker=float(args.threads),
                             segmenter_path=segmenter(args, variant, prep),
                             weights=dict(w.split("=", 1) for w in args.weights))
    ctx = LoopContext(0, 1, torch.device("cpu"), lambda m: m, report, lambda: None)
    fit({**RECIPE, **VARIANTS[variant]}, settings, ctx)
    return folder / "best", best["value"]


def segmenter(args, variant: str, prep) -> str | None:
    """The dataset's lung segmenter (trained once, seed 0, cached in the work folder) for lung_crop variants."""
    if not VARIANTS[variant].get("lung_crop"):
        return None
    from tune_ct.data.workdir import WorkFolder
    from tune_ct.train.segmenter import ensure_segmenter

    return str(ensure_segmenter(prep, WorkFolder(args.out / "work"), 0)[0])


def score(args, checkpoint: Path, prep, settings, trained_on: set[str]) -> dict:
    from tune_ct.data.external_set import load_external
    from tune_ct.evaluate.evaluation import evaluate_on, locked_split_of
    from tune_ct.evaluate.external_score import score_external
    from tune_ct.model.checkpoint import load_checkpoint_model

    model, meta = load_checkpoint_model(checkpoint)
    test = evaluate_on(model, meta, locked_split_of(prep, settings))
    dev = [e for e in prep.manifest.in_split("test") if not e.collection]  # the dev set's own locked test films
    keep = np.array([f in {prep.manifest.film_path(e) for e in dev} for f in test.files])
    from tune_ct.evaluate.metrics import classification_metrics

    y_pred = test.probs.argmax(1)
    out = {"test_macro_f1": classification_metrics(test.y_true[keep], y_pred[keep])["macro_f1"],
           "test_n": int(keep.sum()), "epoch": meta.epoch}
    for name, origins in [*SETS.items(), *[(o, (o,)) for o in SETS["A"] + SETS["B"]]]:
        if set(origins) & trained_on:
            continue
        ext = load_external(args.external, labels_of(args.external, origins, args.out), name=name)
        report = score_external(model, meta, ext, settings.work, n_boot=500)
        out[name] = {"macro_f1": report["macro_f1"], "ci95": report["ci95"]["macro_f1"], "n": report["n"],
                     "recall": report["per_class_recall"]}
    return out


def run_one(args, variant: str, seed: int) -> dict:
    path = args.out / "runs" / f"{variant}-s{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    prep, settings = prepared(args, variant)
    trained_on = {variant[len("plus_"):]} if variant.startswith("plus_") else set()
    started = time.monotonic()
    checkpoint, val = train(args, variant, seed, prep, args.out / "runs" / f"{variant}-s{seed}")
    row = {"variant": variant, "seed": seed, "params": {**RECIPE, **VARIANTS[variant]},
           "train_seconds": round(time.monotonic() - started, 1), "val_macro_f1": round(val, 4),
           **score(args, checkpoint, prep, settings, trained_on)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    print(f"{variant} seed {seed}: test {row['test_macro_f1']:.3f}, A {row.get('A', {}).get('macro_f1', float('nan')):.3f}, "
          f"B {row.get('B', {}).get('macro_f1', float('nan')):.3f} ({row['train_seconds']:.0f} s)", flush=True)
    return row


def paired(rows: list[dict], variant: str, key, base: str = "base") -> dict | None:
    """variant minus base, paired by seed: mean and a t interval over the seeds both have."""
    by = {(r["variant"], r["seed"]): r for r in rows}
    diffs = [key(by[(variant, s)]) - key(by[(base, s)]) for (v, s) in by if v == variant and (base, s) in by
             and key(by[(variant, s)]) is not None and key(by[(base, s)]) is not None]
    if len(diffs) < 2:
        return None
    mean, sd = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
    half = T95.get(len(diffs) - 1, 2.0) * sd / math.sqrt(len(diffs))
    return {"mean": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)], "n": len(diffs)}


def summarise(rows: list[dict]) -> dict:
    def mean_of(variant, key):
        vals = [key(r) for r in rows if r["variant"] == variant and key(r) is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    def fig(name):
        return lambda r: r.get(name, {}).get("macro_f1")

    variants = sorted({r["variant"] for r in rows}, key=list(VARIANTS).index)
    table = {v: {"seeds": sorted(r["seed"] for r in rows if r["variant"] == v),
                 "test_macro_f1": mean_of(v, lambda r: r["test_macro_f1"]),
                 **{k: mean_of(v, fig(k)) for k in ("A", "B", *SETS["A"], *SETS["B"])},
                 "paired_vs_base": {"test": paired(rows, v, lambda r: r["test_macro_f1"]),
                                    **{k: paired(rows, v, fig(k)) for k in ("A", "B", *SETS["A"], *SETS["B"])}}
                 if v != "base" else None} for v in variants}
    levers = [v for v in variants if not v.startswith("plus_") and table[v]["A"] is not None]
    pick_a = max(levers, key=lambda v: table[v]["A"])  # (a) chosen on A, reported on B
    pick_b = max(levers, key=lambda v: table[v]["B"])  # (b) chosen on B, reported on A
    protocol = {"a": {"chosen_on_A": pick_a, "report_B": table[pick_a]["B"]},
                "b": {"chosen_on_B": pick_b, "report_A": table[pick_b]["A"]}}
    protocol["mean"] = round((protocol["a"]["report_B"] + protocol["b"]["report_A"]) / 2, 4)
    if "base" in table:
        protocol["base_mean"] = round((table["base"]["B"] + table["base"]["A"]) / 2, 4)
    return {"variants": table, "protocol": protocol}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--sources", type=Path)
    p.add_argument("--external", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variants", nargs="+", default=["base", "acq", "pct", "zscore", "bnrc", "clahe", "acq_pct"],
                   choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--weights", action="append", default=[], metavar="BACKBONE=FILE",
                   help="local pretrained weights, as the search takes them (bench/lite0_weights.py)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run_one(args, v, s) for s in args.seeds for v in args.variants]
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
              "command": " ".join(sys.argv), "recipe": RECIPE, "variants_params": VARIANTS, "sets": SETS,
              "rows": rows, **summarise(rows)}
    print(json.dumps({k: result[k] for k in ("variants", "protocol")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
