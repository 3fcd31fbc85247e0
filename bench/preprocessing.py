"""Shortcut resistance: film preprocessing (CLAHE, crop to the lungs) and selecting on films from another source.

    python bench/preprocessing.py --data DIR --sources sources.csv --out /tmp/prep \
        [--variants none-false clahe-false none-true clahe-true] [--skip-loo] [--loo VARIANT ...] \
        [--skip-selection] [--selection-search val_macro_f1] \
        [--selection-metrics val_macro_f1 ext_val_macro_f1 blend_macro_f1] [--rerun-metrics ext_val_macro_f1] \
        [--trials 6] [--epochs 2] [--json bench/results/preprocessing.json]

Everything runs through the product's commands (`python -m tune_ct.search`, `python -m tune_ct.origins`), with
one fixed configuration (the earlier leave-one-origin-out one at 2 epochs instead of 3: baseline_cnn, 64 px,
batch 64, lr 1.5e-3, wd 1e-4, rotation 6 deg, crop scale >= 0.9), one shared --workdir (one manifest, one locked
split, shared caches and one lung segmenter) and its own MLflow SQLite store, all under --out.

1. Preprocessing: one one-trial search per variant (equalize x lung_crop). Per variant: locked-test macro-F1 with
   the summary's bootstrap CI, per-class recall, the product's lung focus vs its even-spread baseline, and from the
   same model (evaluated again here with the product's functions) the kermany-pediatric Normal recall, the other
   origins' macro-F1 and a lung focus whose masks are cropped like the films (see `aligned_lung_focus`); paired
   bootstrap differences against the first variant. Then `tune_ct.origins --holdout kermany-pediatric` for the
   first variant and the crop variant with the best *val* macro-F1 (never chosen on test), each in its own storage.
2. Selection: this database has one origin that spans two classes (kermany-pediatric: paediatric Normal and all
   Viral Pneumonia). Half of its Normal films of the train/val splits (whole duplicate groups, seeded, half of
   each split) are taken out of a derived dataset folder (symlinks under --out; every test film stays, and a
   copy of the shared manifest seeds its own workdir; the script checks the locked test split is the same films)
   and handed to --select-on as `Normal/*.png`. One search (--selection-search, `--scheduler none`, <= 2 epochs so
   the product keeps every epoch's checkpoint) runs with --select-on, so every trial reports val and ext_val
   figures; the winner each of --selection-metrics would pick among those trials (the product's rule, checked
   against the product's own pick) is tested on the locked test split. The searches sample with `--sampler
   random` (seeded random draws, as TPE's 10 start-up trials were; the default sampler would follow each metric's
   own values after a few), so a search with another metric samples the same configurations: --rerun-metrics runs
   such searches to confirm the choice.
   What the held-out set is: films of a source the model *does* train on (the other half of kermany Normal), with
   one class only: ext_val_macro_f1 on it is 2R/(1+R) of its Normal recall R, i.e. "how many of these children's
   normal films it calls Normal". It is not another hospital.

A finished step is not re-run when its summary JSON is already under --out (delete it to re-run); --json keeps
what earlier invocations measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from machine import cpu_model  # bench/machine.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
HOLDOUT = "kermany-pediatric"
FIXED = {"backbone": "baseline_cnn", "image_size": 64, "epochs": 2, "batch_size": 64, "lr": 1.5e-3,
         "weight_decay": 1e-4, "aug_rotation_deg": 6.0, "aug_crop_scale_min": 0.9}
VARIANTS = {"none-false": ("none", False), "clahe-false": ("clahe", False), "none-true": ("none", True),
            "clahe-true": ("clahe", True), "hist-false": ("hist", False), "hist-true": ("hist", True)}
SELECT_ON_NAME = "kermany_normal_holdout"


def run_cmd(cmd: list[str], log: Path, cwd: Path) -> float:
    """Run a product command; its output goes to `log`; returns its wall seconds, raises on failure."""
    started = time.monotonic()
    print(f"$ {' '.join(cmd)}", flush=True)
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, check=False, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd).returncode
    seconds = round(time.monotonic() - started, 1)
    if rc != 0:
        tail = "".join(log.read_text().splitlines(True)[-15:])
        raise RuntimeError(f"exit {rc} after {seconds}s: {' '.join(cmd)}\n--- last lines of {log} ---\n{tail}")
    print(f"  done in {seconds}s (log {log})", flush=True)
    return seconds


def caches(workdir: Path) -> dict[str, dict]:
    out = {}
    for index in sorted((workdir / "cache").glob("*/index.json")):
        raw = json.loads(index.read_text())
        out[index.parent.name] = {"films": len(raw["files"]), "size": raw["size"],
                                  "build_seconds": raw.get("build_seconds"), "per_film": raw.get("per_film")}
    return out


def space_doc(params: dict, search: dict, description: str) -> dict:
    return {"description": description, "search": search, "params": params}


# ---------------------------------------------------------------------------------------------------- analysis
class Analysis:
    """The locked test split of one dataset folder + workdir, for re-evaluating search winners in this process."""

    def __init__(self, data: Path, workdir: Path, sources: Path, tracking_uri: str):
        from tune_ct.data.prepare import DataSettings
        from tune_ct.data.workdir import WorkFolder
        from tune_ct.evaluate.evaluation import locked_test_set

        self.test = locked_test_set(DataSettings(data=data, work=WorkFolder(workdir), sources=sources))
        self.tracking_uri = tracking_uri
        self.predictions: dict[str, tuple] = {}

    def evaluate(self, ref: str, key: str) -> dict:
        """`ref`: a model URI or a checkpoint folder; the predictions stay in self.predictions[key]."""
        from tune_ct.evaluate.evaluation import evaluate_on
        from tune_ct.evaluate.full_report import full_report
        from tune_ct.evaluate.statistics import by_origin
        from tune_ct.registry.models import load_model

        model, loaded = load_model(ref, self.tracking_uri)
        meta = loaded.checkpoint  # network, image size and film preprocessing, as the model was trained
        ev = evaluate_on(model, meta, self.test)
        y_pred = ev.probs.argmax(1)
        self.predictions[key] = (ev.files, ev.y_true, y_pred, ev.origins)
        origins = by_origin(ev.y_true, y_pred, ev.origins)
        report = full_report(ev, seed=0)
        out = {"model": ref, "epoch_in_checkpoint": meta.epoch,
               "test_macro_f1": ev.metrics["test_macro_f1"], "test_accuracy": ev.metrics["test_accuracy"],
               "test_balanced_accuracy": ev.metrics["test_balanced_accuracy"], "test_ci95": report["ci95"],
               "test_per_class_recall": {c: v["recall"] for c, v in report["per_class"].items()},
               "test_confusion_matrix": report["confusion_matrix"],
               "kermany_normal": kermany_normal(ev, y_pred),
               "by_origin": {o: {"n": v["n"], "accuracy": round(v["accuracy"], 4),
                                 "recall": {c: round(r, 4) for c, r in v["recall"].items()}}
                             for o, v in origins.items()},
               "other_origins_macro_f1": other_origins_macro_f1(ev, y_pred),
               "aligned_lung_focus": aligned_lung_focus(model, meta, ev, self.test)}
        return out


def paired_difference(a: tuple, b: tuple, n_boot: int = 1000, seed: int = 0) -> dict:
    """b minus a on the same test films, 95% paired bootstrap interval: macro-F1 and kermany Normal recall."""
    from sklearn.metrics import f1_score

    from tune_ct.data.files import CLASSES

    files_a, y_true, pred_a, origins = a
    files_b, _, pred_b, _ = b
    if list(files_a) != list(files_b):
        raise ValueError("the two evaluations are not on the same films")
    kids = np.array([o == HOLDOUT for o in origins]) & (y_true == CLASSES.index("Normal"))
    rng = np.random.default_rng(seed)
    labels = list(range(len(CLASSES)))

    def figures(idx):
        f1 = (f1_score(y_true[idx], pred_b[idx], labels=labels, average="macro", zero_division=0)
              - f1_score(y_true[idx], pred_a[idx], labels=labels, average="macro", zero_division=0))
        k = idx[kids[idx]]
        rec = float((pred_b[k] == y_true[k]).mean() - (pred_a[k] == y_true[k]).mean()) if len(k) else np.nan
        return f1, rec

    point = figures(np.arange(len(y_true)))
    boots = np.array([figures(rng.integers(0, len(y_true), len(y_true))) for _ in range(n_boot)])
    ci = lambda col: [round(float(np.nanpercentile(boots[:, col], 2.5)), 4),
                      round(float(np.nanpercentile(boots[:, col], 97.5)), 4)]
    return {"macro_f1_diff": round(float(point[0]), 4), "macro_f1_diff_ci95": ci(0),
            "kermany_normal_recall_diff": round(float(point[1]), 4), "kermany_normal_recall_diff_ci95": ci(1),
            "bootstrap_samples": n_boot}


def kermany_normal(ev, y_pred) -> dict:
    from tune_ct.data.files import CLASSES

    normal = CLASSES.index("Normal")
    rows = [i for i, o in enumerate(ev.origins) if o == HOLDOUT and ev.y_true[i] == normal]
    called = np.bincount(y_pred[rows], minlength=len(CLASSES))
    recall = float(called[normal] / len(rows)) if rows else None
    return {"n": len(rows), "recall": recall, "recall_ci95": wilson(int(called[normal]), len(rows)),
            "called": {c: int(n) for c, n in zip(CLASSES, called)}}


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(centre - half), 4), round(float(centre + half), 4)]


def other_origins_macro_f1(ev, y_pred) -> dict:
    """Macro-F1 on the films of every origin but the held-out one, over the classes they have (as origins does)."""
    from sklearn.metrics import f1_score

    rows = np.array([o != HOLDOUT for o in ev.origins])
    yt, yp = ev.y_true[rows], y_pred[rows]
    present = sorted(set(yt.tolist()))
    return {"n": int(rows.sum()), "macro_f1": float(f1_score(yt, yp, labels=present, average="macro",
                                                             zero_division=0))}


def aligned_lung_focus(model, meta, ev, test) -> dict:
    """Grad-CAM mass inside the lung mask, with the mask put through the same crop as the film.

    The product's figure (`lung_focus` in the summary) resizes each film's full-film mask to the model's input;
    with lung_crop the input is the crop, so that mask no longer lines up with the film (and its even-spread
    baseline is the mask's share of the *whole* film). Here the mask is cropped with the box the segmenter finds
    on the film (the same call the cache makes), then resized like the film; without a crop this is the
    product's computation and must give its figure. `meta`: the model's CheckpointMeta; `test`: its TestSet."""
    from PIL import Image

    from tune_ct.data.cache import open_or_build
    from tune_ct.data.files import CLASSES, decode_file, resize
    from tune_ct.evaluate import gradcam
    from tune_ct.model.lungs import crop_box, crop_to_lungs, load_segmenter
    from tune_ct.model.preprocess import per_film

    prep = meta.film
    size = meta.image_size
    data = open_or_build(test.subset, size, test.cache_root, per_film=per_film(prep))
    masked = [i for i, f in enumerate(ev.files) if gradcam.mask_path(test.root, f).is_file()]
    rows = np.array([data.files.index(ev.files[i]) for i in masked])
    pixels = np.asarray(data.pixels[rows])
    y_pred = ev.probs.argmax(1)
    cams = gradcam.cam_maps(model, pixels, [int(y_pred[i]) for i in masked])
    segmenter = load_segmenter(Path(prep.segmenter))[0] if prep.lung_crop else None
    per_class: dict[str, list[float]] = {c: [] for c in CLASSES}
    shares, fallbacks = [], 0
    for cam, i in zip(cams, masked):
        file = ev.files[i]
        mask, _ = decode_file(gradcam.mask_path(test.root, file))
        if segmenter is not None:
            film, _ = decode_file(test.root / file)
            _, box = crop_to_lungs(film, segmenter)
            fallbacks += int(box.fallback)
            full = np.asarray(Image.fromarray(mask).resize((film.shape[1], film.shape[0]), Image.BILINEAR))
            mask = crop_box(full, box)
        m = resize(np.ascontiguousarray(mask), size) >= 128
        if not m.any():
            continue
        value = gradcam.lung_focus(cam, m)
        if np.isfinite(value):
            per_class[CLASSES[int(ev.y_true[i])]].append(value)
            shares.append(float(m.mean()))
    every = [v for vs in per_class.values() for v in vs]
    return {"n": len(every), "mean": float(np.mean(every)) if every else None,
            "even_spread_baseline": float(np.mean(shares)) if shares else None,
            "per_class": {c: {"n": len(v), "mean": float(np.mean(v))} for c, v in per_class.items() if v},
            "crop_fallbacks": fallbacks, "masks_cropped": segmenter is not None}


# ------------------------------------------------------------------------------------------- part 1: preprocessing
def variant_params(name: str) -> dict:
    equalize, crop = VARIANTS[name]
    return {**FIXED, "equalize": equalize, "lung_crop": crop}


def run_variant(args, name: str, common: list[str]) -> dict:
    summary = args.out / f"variant_{name}.summary.json"
    record = args.out / f"variant_{name}.run.json"
    if summary.exists() and record.exists():
        return json.loads(record.read_text())
    space = args.out / f"variant_{name}.yaml"
    space.write_text(yaml.safe_dump(space_doc(
        variant_params(name), {"metric": "val_macro_f1", "num_samples": 1, "max_concurrent": 1,
                               "cpus_per_worker": args.cpus, "grace_period": FIXED["epochs"]},
        f"bench/preprocessing.py variant {name}"), sort_keys=False))
    segmenters_before = set((args.workdir / "segmenters").glob("*.lungs.pt"))
    caches_before = caches(args.workdir)
    seconds = run_cmd([sys.executable, "-m", "tune_ct.search", "--space", str(space), "--summary", str(summary),
                       "--num-samples", "1", "--name", f"prep-{name}", *common], args.out / f"variant_{name}.log",
                      args.out)
    new_caches = {k: v for k, v in caches(args.workdir).items() if k not in caches_before}
    new_segmenters = set((args.workdir / "segmenters").glob("*.lungs.pt")) - segmenters_before
    out = {"variant": name, "params": variant_params(name), "command_seconds": seconds,
           "new_caches": new_caches, "segmenter_trained": None}
    if new_segmenters:
        from tune_ct.model.lungs import load_segmenter

        path = min(new_segmenters)
        out["segmenter_trained"] = {"file": str(path), **load_segmenter(path)[1]}
    record.write_text(json.dumps(out, indent=1, default=str))
    return out


def variant_row(summary: dict, extra: dict) -> dict:
    t = summary["test_metrics"]
    focus = summary.get("lung_focus") or {}
    return {
        "val_macro_f1": summary["val_metrics"].get("val_macro_f1"),
        "best_epoch": summary.get("best_epoch"),
        "test_n": t["n"], "test_macro_f1": t["macro_f1"], "test_accuracy": t["accuracy"],
        "test_balanced_accuracy": t["balanced_accuracy"],
        # test_ci95: summaries from before SearchSummary; since, the CIs are in its full test report
        "test_ci95": summary.get("test_ci95") or (summary.get("test_report") or {}).get("ci95"),
        "test_per_class_recall": t["per_class_recall"],
        "test_confusion_matrix": t["confusion_matrix"],
        "lung_focus_product": (focus.get("all_with_masks") or {}).get("mean"),
        "lung_focus_product_even_spread": focus.get("uniform_cam_baseline"),
        "lung_focus_product_per_class": {c: v.get("mean") for c, v in (focus.get("per_class") or {}).items()},
        "search_seconds": summary.get("seconds"),
        **extra,
    }


def run_loo(args, name: str) -> dict:
    """`tune_ct.origins` names its two Ray Train runs origins-<holdout>-<model> whatever the configuration, and Ray
    Train resumes a run whose name it finds under --storage: a second LOO in the same storage would get the first
    one's models back (see BENCHMARKS.md). Each LOO therefore gets its own storage folder."""
    out_json = args.out / f"loo_{name}.json"
    record = args.out / f"loo_{name}.run.json"
    if out_json.exists() and record.exists():
        return {**json.loads(record.read_text()), "result": json.loads(out_json.read_text())}
    config = args.out / f"loo_{name}.yaml"
    config.write_text(yaml.safe_dump(space_doc(variant_params(name), {"num_samples": 1},
                                               f"bench/preprocessing.py LOO {name}"), sort_keys=False))
    seconds = run_cmd([sys.executable, "-m", "tune_ct.origins", "--data", str(args.data), "--sources",
                       str(args.sources), "--workdir", str(args.workdir), "--holdout", HOLDOUT, "--config",
                       str(config), "--storage", str(args.out / f"ray_results_loo_{name}"), "--json", str(out_json)],
                      args.out / f"loo_{name}.log", args.out)
    record.write_text(json.dumps({"variant": name, "command_seconds": seconds}))
    return {"variant": name, "command_seconds": seconds, "result": json.loads(out_json.read_text())}


def loo_row(loo: dict) -> dict:
    rows = {}
    for model, v in loo["result"]["models"].items():
        rows[model] = {"paediatric_normal_recall": v["heldout_recall"].get("Normal"),
                       "viral_pneumonia_recall": v["heldout_recall"].get("Viral Pneumonia"),
                       "heldout_n": v.get("heldout_n"), "heldout_predicted_as": v["heldout_predicted_as"],
                       "other_origins_n": v["other_origins_n"],
                       "other_origins_macro_f1": v.get("other_origins_macro_f1")}
    return {"command_seconds": loo["command_seconds"], "train_images": loo["result"].get("train_images"),
            "models": rows, "raw": loo["result"]["models"]}


# --------------------------------------------------------------------------------------------- part 2: selection
def build_selection_data(args) -> dict:
    """The derived dataset (all films but the held-out half of kermany Normal train/val), the --select-on folder,
    and a workdir seeded with the shared manifest; checked to keep the same locked test split."""
    from tune_ct.data.manifest import load

    base = args.out / "selection"
    plan_file = base / "plan.json"
    if plan_file.exists():
        return json.loads(plan_file.read_text())
    if base.exists():
        shutil.rmtree(base)
    manifest_path = next((args.workdir / "manifests").glob("*.manifest.json"))
    manifest = load(manifest_path)
    groups: dict[tuple[str, int], list] = {}
    for e in manifest.entries:
        if e.origin == HOLDOUT and e.label == "Normal" and e.split in ("train", "val"):
            groups.setdefault((e.split, e.group), []).append(e)
    members = {}
    for e in manifest.entries:
        members.setdefault(e.group, []).append(e)
    held = []
    rng = random.Random(args.seed)
    for split in ("train", "val"):
        keys = sorted(k for k in groups if k[0] == split)
        # whole duplicate groups only, and only groups made of kermany Normal films alone
        keys = [k for k in keys if all(m.origin == HOLDOUT and m.label == "Normal" for m in members[k[1]])]
        rng.shuffle(keys)
        total, taken = sum(len(groups[k]) for k in keys), 0
        for k in keys:
            if taken >= total / 2:
                break
            held += groups[k]
            taken += len(groups[k])
    held_files = {e.file for e in held}
    derived = base / "data" / Path(manifest.data_root).name  # same folder name: same manifest file name
    data_root = Path(manifest.data_root)
    for cls_dir in sorted(p for p in data_root.iterdir() if p.is_dir()):
        for sub in sorted(p for p in cls_dir.iterdir() if p.is_dir()):
            target = derived / cls_dir.name / sub.name
            if sub.name == "images":
                target.mkdir(parents=True)
                for f in sorted(sub.iterdir()):
                    rel = f"{cls_dir.name}/images/{f.name}"
                    if rel not in held_files:
                        (target / f.name).symlink_to(f)
            else:  # masks: the folder itself (never a film of a class; Grad-CAM and the segmenter read them)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(sub, target_is_directory=True)
    for f in sorted(p for p in data_root.iterdir() if p.is_file()):
        (derived / f.name).symlink_to(f)
    select_on = base / SELECT_ON_NAME / "Normal"
    select_on.mkdir(parents=True)
    for rel in sorted(held_files):
        (select_on / Path(rel).name).symlink_to(data_root / rel)
    workdir = base / "workdir"
    (workdir / "manifests").mkdir(parents=True)
    shutil.copy2(manifest_path, workdir / "manifests" / manifest_path.name)
    seconds = run_cmd([sys.executable, "-m", "tune_ct.data", "--data", str(derived), "--sources", str(args.sources),
                       "--workdir", str(workdir), "--json", str(base / "data_summary.json")],
                      base / "data.log", args.out)
    derived_manifest = load(workdir / "manifests" / manifest_path.name)
    test_before = sorted((e.file, e.sha) for e in manifest.entries if e.split == "test")
    test_after = sorted((e.file, e.sha) for e in derived_manifest.entries if e.split == "test")
    split_before = {e.file: e.split for e in manifest.entries}
    moved = [e.file for e in derived_manifest.entries if split_before.get(e.file) != e.split]
    if test_before != test_after or moved:
        raise RuntimeError(f"derived dataset changed the locked split: test same={test_before == test_after}, "
                           f"{len(moved)} file(s) changed split")
    plan = {"derived_data": str(derived), "select_on": str(select_on.parent), "workdir": str(workdir),
            "held_out": len(held), "held_out_by_split": {s: sum(1 for e in held if e.split == s)
                                                         for s in ("train", "val")},
            "kermany_normal_trainval": sum(len(v) for v in groups.values()),
            "kermany_normal_test": sum(1 for e in manifest.entries if e.origin == HOLDOUT and e.label == "Normal"
                                       and e.split == "test"),
            "derived_entries": len(derived_manifest.entries), "test_films": len(test_after),
            "test_split_identical": True, "data_command_seconds": seconds,
            "derived_train_by_class": {c: sum(1 for e in derived_manifest.entries if e.split == "train"
                                              and e.label == c) for c in ("COVID", "Lung_Opacity", "Normal",
                                                                          "Viral Pneumonia")}}
    plan_file.write_text(json.dumps(plan, indent=1))
    return plan


def selection_space(args, metric: str) -> dict:
    params = {**{k: v for k, v in FIXED.items() if k not in ("lr", "aug_rotation_deg", "aug_crop_scale_min")},
              "lr": {"loguniform": [5.0e-4, 5.0e-3]}, "aug_rotation_deg": {"uniform": [0.0, 10.0]},
              "aug_crop_scale_min": {"uniform": [0.7, 1.0]}, "aug_brightness": {"uniform": [0.0, 0.15]},
              "equalize": "none", "lung_crop": False}
    params["epochs"] = args.epochs
    return space_doc(params, {"metric": metric, "num_samples": args.trials, "max_concurrent": 2,
                              "cpus_per_worker": 1, "grace_period": args.epochs, "reduction_factor": 2},
                     f"bench/preprocessing.py selection on {metric}")


SELECTION_COLUMNS = ("epoch", "val_macro_f1", "ext_val_macro_f1", "ext_val_recall_normal", "blend_macro_f1")


def trial_table(storage: Path, name: str) -> list[dict]:
    """Every trial's config and per-epoch figures (Tune's result.json), with each epoch's checkpoint folder."""
    rows = []
    for result in sorted((storage / name).glob("*/result.json")):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if not reports:
            continue
        config = reports[-1].get("config") or json.loads((result.parent / "params.json").read_text())
        epochs = []
        for i, r in enumerate(reports):
            ckpt = result.parent / f"checkpoint_{i:06d}"
            epochs.append({**{k: r.get(k) for k in SELECTION_COLUMNS},
                           "checkpoint": str(ckpt) if ckpt.is_dir() else None})
        rows.append({"trial_dir": result.parent.name, "trial_id": reports[-1].get("trial_id"),
                     **{k: config.get(k) for k in ("lr", "aug_rotation_deg", "aug_crop_scale_min",
                                                   "aug_brightness")}, "epochs": epochs})
    return rows


def pick(trials: list[dict], metric: str) -> dict:
    """The product's rule (tune_ct.train.best.best_trial): the best epoch of each trial with a checkpoint, then
    the strictly best trial in trial order (ties keep the earlier)."""
    best = None
    for t in sorted(trials, key=lambda t: t["trial_dir"]):
        rows = [e for e in t["epochs"] if e.get(metric) is not None and e["checkpoint"]]
        if not rows:
            continue
        row = max(rows, key=lambda e: e[metric])  # first maximum, as DataFrame.idxmax
        if best is None or row[metric] > best[1][metric]:
            best = (t, row)
    if best is None:
        raise RuntimeError(f"no trial reported {metric} with a checkpoint")
    t, row = best
    return {"trial_dir": t["trial_dir"], "trial_id": t["trial_id"], "epoch": row["epoch"],
            "checkpoint": row["checkpoint"], metric: row[metric],
            "config": {k: t[k] for k in ("lr", "aug_rotation_deg", "aug_crop_scale_min", "aug_brightness")},
            "figures_at_pick": {k: row.get(k) for k in SELECTION_COLUMNS}}


def run_selection(args, plan: dict, metric: str) -> dict:
    """One search with this metric (no ASHA: every trial runs every epoch, and with 2 epochs both checkpoints of
    each trial are kept, so another metric's choice can be read from the same trials)."""
    summary = args.out / f"select_{metric}.summary.json"
    record = args.out / f"select_{metric}.run.json"
    if summary.exists() and record.exists():
        return json.loads(record.read_text())
    space = args.out / f"select_{metric}.yaml"
    space.write_text(yaml.safe_dump(selection_space(args, metric), sort_keys=False))
    name = f"select-{metric}"
    seconds = run_cmd([sys.executable, "-m", "tune_ct.search", "--data", plan["derived_data"], "--sources",
                       str(args.sources), "--workdir", plan["workdir"], "--space", str(space), "--summary",
                       str(summary), "--select-on", plan["select_on"], "--seed", str(args.seed), "--name", name,
                       "--sampler", "random", "--scheduler", "none", "--storage", str(args.out / "ray_results"),
                       "--tracking-uri", args.tracking_uri, "--experiment", "preprocessing_bench",
                       "--register-name", "", "--optuna-storage", f"sqlite:///{args.out / 'optuna.db'}"],
                      args.out / f"select_{metric}.log", args.out)
    out = {"metric": metric, "command_seconds": seconds, "trials": trial_table(args.out / "ray_results", name)}
    record.write_text(json.dumps(out, indent=1, default=str))
    return out


def selection_part(args, result: dict) -> None:
    plan = build_selection_data(args)
    sel = result["selection"] = {"plan": plan, "searches": {}, "winners": {}, "differences": {}}
    analysis = Analysis(Path(plan["derived_data"]), Path(plan["workdir"]), args.sources, args.tracking_uri)
    searched = [args.selection_search] + [m for m in args.rerun_metrics if m != args.selection_search]
    for metric in searched:
        run = run_selection(args, plan, metric)
        summary = json.loads((args.out / f"select_{metric}.summary.json").read_text())
        row = variant_row(summary, {"command_seconds": run["command_seconds"], "best_config": summary["best_config"],
                                    "best_trial_id": summary.get("best_trial_id"),
                                    "best_checkpoint": summary.get("best_checkpoint")})
        row["reeval"] = analysis.evaluate(summary["model_uri"], f"search:{metric}")
        row["trials"] = run["trials"]
        row["replica_pick"] = {m: pick(run["trials"], m) for m in args.selection_metrics}
        sel["searches"][metric] = row
        write(args.json, result)
    base = sel["searches"][args.selection_search]
    # The product picked base's val winner; the replica must agree with it, or the post-hoc picks mean nothing.
    replica = base["replica_pick"][args.selection_search]
    sel["replica_agrees_with_product"] = (str(replica["trial_id"]) == str(base["best_trial_id"])
                                          and int(replica["epoch"]) == int(base["best_epoch"]))
    for metric in args.selection_metrics:
        chosen = base["replica_pick"][metric]
        if metric == args.selection_search:
            ev = base["reeval"]
            analysis.predictions[f"pick:{metric}"] = analysis.predictions[f"search:{metric}"]
        else:
            ev = analysis.evaluate(chosen["checkpoint"], f"pick:{metric}")
        sel["winners"][metric] = {"selected_by": metric, "pick": chosen, "test": ev,
                                  "confirmed_by_own_search": None}
        if metric in sel["searches"] and metric != args.selection_search:
            own = sel["searches"][metric]
            sel["winners"][metric]["confirmed_by_own_search"] = {
                "best_trial_id": own["best_trial_id"], "best_epoch": own["best_epoch"],
                "best_config": own["best_config"], "test_macro_f1": own["test_macro_f1"],
                "kermany_normal_recall": own["reeval"]["kermany_normal"]["recall"]}
        write(args.json, result)
    first = f"pick:{args.selection_metrics[0]}"
    for metric in args.selection_metrics[1:]:
        sel["differences"][f"{metric} minus {args.selection_metrics[0]}"] = paired_difference(
            analysis.predictions[first], analysis.predictions[f"pick:{metric}"])
    write(args.json, result)


# ------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--sources", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="working folder: workdir, MLflow store, Ray results, logs")
    p.add_argument("--workdir", type=Path, help="shared manifest and caches (default OUT/workdir)")
    p.add_argument("--variants", nargs="+", default=["none-false", "clahe-false", "none-true", "clahe-true"],
                   choices=sorted(VARIANTS))
    p.add_argument("--skip-loo", action="store_true", help="no leave-one-origin-out runs")
    p.add_argument("--loo", nargs="+", help="variants to run the LOO for (default: the first variant and the crop "
                   "variant with the best val macro-F1)")
    p.add_argument("--skip-selection", action="store_true")
    metrics = ["val_macro_f1", "ext_val_macro_f1", "blend_macro_f1", "ext_val_balanced_accuracy"]
    p.add_argument("--selection-search", default="val_macro_f1", choices=metrics,
                   help="the metric of the selection search the product runs and tests")
    p.add_argument("--selection-metrics", nargs="+", default=["val_macro_f1", "ext_val_macro_f1", "blend_macro_f1"],
                   choices=metrics, help="metrics whose choice among the same trials is tested (first = reference)")
    p.add_argument("--rerun-metrics", nargs="*", default=[], choices=metrics,
                   help="also run a whole search with these metrics, to confirm the choice read from the first")
    p.add_argument("--trials", type=int, default=6, help="trials of the selection search")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial of the selection search (<= 2 keeps "
                   "every epoch's checkpoint: the product keeps two per trial)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of each one-trial variant search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=REPO / "bench/results/preprocessing.json")
    args = p.parse_args(argv)
    args.data, args.sources, args.out = args.data.resolve(), args.sources.resolve(), args.out.resolve()
    args.workdir = (args.workdir or args.out / "workdir").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.tracking_uri = f"sqlite:///{args.out / 'mlflow.db'}"
    started = time.monotonic()
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cpus": os.cpu_count(),
              "load_average_start": os.getloadavg(), "fixed_config": FIXED, "holdout": HOLDOUT,
              "argv": sys.argv if argv is None else argv}
    if args.json.exists():  # a resumed run keeps what earlier invocations measured
        previous = json.loads(args.json.read_text())
        result = {**previous, **{k: result[k] for k in ("argv", "load_average_start")}}

    if not (args.out / "data.run.json").exists():
        seconds = run_cmd([sys.executable, "-m", "tune_ct.data", "--data", str(args.data), "--sources",
                           str(args.sources), "--workdir", str(args.workdir), "--json", str(args.out / "data.json")],
                          args.out / "data.log", args.out)
        (args.out / "data.run.json").write_text(json.dumps({"seconds": seconds}))
    result["manifest_command_seconds"] = json.loads((args.out / "data.run.json").read_text())["seconds"]
    common = ["--data", str(args.data), "--sources", str(args.sources), "--workdir", str(args.workdir),
              "--storage", str(args.out / "ray_results"), "--tracking-uri", args.tracking_uri,
              "--experiment", "preprocessing_bench", "--register-name", "", "--seed", str(args.seed)]

    analysis = None
    variants = result.setdefault("variants", {})
    for name in args.variants:
        try:
            run = run_variant(args, name, common)
        except RuntimeError as exc:
            print(f"variant {name} failed: {exc}", file=sys.stderr)
            variants[name] = {"error": str(exc)}
            continue
        summary = json.loads((args.out / f"variant_{name}.summary.json").read_text())
        analysis = analysis or Analysis(args.data, args.workdir, args.sources, args.tracking_uri)
        row = variant_row(summary, {"run": run})
        row["reeval"] = analysis.evaluate(summary["model_uri"], name)
        variants[name] = row
        print(f"{name}: test macro-F1 {row['test_macro_f1']:.3f}, kermany Normal recall "
              f"{row['reeval']['kermany_normal']['recall']:.3f}", flush=True)
        write(args.json, result)
    if analysis is not None and args.variants[0] in analysis.predictions:
        result["variant_differences"] = {
            f"{n} minus {args.variants[0]}": paired_difference(analysis.predictions[args.variants[0]],
                                                               analysis.predictions[n])
            for n in args.variants[1:] if n in analysis.predictions}
        write(args.json, result)

    if not args.skip_loo:
        ok = {n: v for n, v in variants.items() if "error" not in v}
        crops = [n for n in ok if VARIANTS[n][1]]
        chosen = args.loo or ([args.variants[0]] + ([max(crops, key=lambda n: ok[n]["val_macro_f1"])] if crops
                                                    else []))
        loo = result.setdefault("loo", {})
        for name in dict.fromkeys(chosen):
            try:
                loo[name] = loo_row(run_loo(args, name))
            except RuntimeError as exc:
                print(f"LOO {name} failed: {exc}", file=sys.stderr)
                loo[name] = {"error": str(exc)}
            write(args.json, result)

    if not args.skip_selection:
        selection_part(args, result)

    result["caches"] = caches(args.workdir)
    if (args.out / "selection" / "workdir").is_dir():
        result["selection_caches"] = caches(args.out / "selection" / "workdir")
    result["total_seconds_this_invocation"] = round(time.monotonic() - started, 1)
    result["load_average_end"] = os.getloadavg()
    write(args.json, result)
    print(f"wrote {args.json} ({result['total_seconds_this_invocation']:.0f}s)")
    return 0


def write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
