"""Stage 6: evaluate a trained model once on the locked test split (never used for tuning).

    python -m tune_ct.evaluate --model MODEL_URI [--data DIR] [--sources CSV] [--json FILE] [--log-run RUN_ID]

MODEL_URI is `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN/model` or a trial checkpoint folder.
Reports accuracy, balanced accuracy, macro-F1 (with 95% bootstrap CIs), per-class precision / recall /
specificity / F1, one-vs-rest ROC-AUC, expected calibration error with a reliability diagram, the confusion
matrix (counts and row-normalised) and, where origins are known, the same broken down by origin.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from tune_ct.cache import open_or_build, write_subset
from tune_ct.files import CLASSES, DataError
from tune_ct.manifest import Manifest
from tune_ct.metrics import (classification_metrics, majority_baseline_macro_f1, metric_key, per_class_recall,
                             plot_confusion_matrix, save_figure)
from tune_ct.models import build_model
from tune_ct.trial import CHECKPOINT_FILE, autocast_dtype, load_checkpoint_file, predict

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1")


@dataclass
class Evaluation:
    split: str
    files: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    metrics: dict  # flat, keys prefixed with the split name
    origins: list[str] | None = None  # per file, when the manifest or a sources CSV knows them

    def headline(self) -> dict:
        p = f"{self.split}_"
        return {
            "split": self.split,
            "n": int(len(self.y_true)),
            "accuracy": self.metrics[p + "accuracy"],
            "balanced_accuracy": self.metrics[p + "balanced_accuracy"],
            "macro_f1": self.metrics[p + "macro_f1"],
            "per_class_recall": per_class_recall(self.metrics, p),
            "confusion_matrix": self.metrics[p + "confusion_matrix"],
            "confusion_matrix_labels": list(CLASSES),
            "majority_class_macro_f1": majority_baseline_macro_f1(self.y_true),
        }


def load_checkpoint_model(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a trial checkpoint (weights-only load) and return it with its saved metadata."""
    path = Path(folder)
    saved = load_checkpoint_file(path if path.is_file() else path / CHECKPOINT_FILE)
    model = build_model(saved["backbone"], int(saved["image_size"]))
    model.load_state_dict(saved["model"])
    model.eval()
    return model, saved


def write_test_subset(manifest: Manifest, root: Path, workdir: Path, limit: int | None, seed: int) -> Path:
    from tune_ct.data import sample, subset_path

    entries = [e for e in sample(manifest, limit, seed) if e.split == "test"]
    path = subset_path(workdir, manifest.hash, limit, seed, "test")
    write_subset(path, root, entries, manifest.hash)
    return path


def evaluate_model(model: torch.nn.Module, image_size: int, subset_path: Path, cache_root: Path,
                   split: str = "test", batch_size: int = 64, device: str | None = None,
                   origins: dict[str, str] | None = None) -> Evaluation:
    device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = open_or_build(subset_path, image_size, cache_root)
    idx = data.indices(split)
    if len(idx) == 0:
        raise ValueError(f"subset {subset_path} has no {split} images")
    model = model.to(device_t).to(memory_format=torch.channels_last)
    probs = predict(model, data.pixels, idx, batch_size, device_t, autocast_dtype("auto", device_t))
    y_true = data.labels[idx]
    metrics = classification_metrics(y_true, probs.argmax(1), prefix=f"{split}_")
    files = [data.files[i] for i in idx]
    known = [origins.get(f, "unknown") for f in files] if origins else None
    if known and all(o == "unknown" for o in known):
        known = None
    return Evaluation(split, files, y_true, probs, metrics, known)


# ---- the full report -------------------------------------------------------------------------------------------

def _from_confusion(cm: np.ndarray) -> dict[str, float]:
    """accuracy, balanced accuracy and macro-F1 from a confusion matrix, as sklearn defines them (balanced
    accuracy over the classes present; macro-F1 over all four, zero when undefined). Used for the bootstrap,
    where calling sklearn 1,000 times would dominate the run time."""
    cm = cm.astype(np.float64)
    tp, rows, cols = np.diag(cm), cm.sum(1), cm.sum(0)
    present = rows > 0
    denom = rows + cols
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "balanced_accuracy": float((tp[present] / rows[present]).mean()) if present.any() else 0.0,
        "macro_f1": float(f1.mean()),
        "covid_recall": float(tp[0] / rows[0]) if rows[0] else float("nan"),
    }


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap over images (resampled with replacement) for the headline figures."""
    k = len(CLASSES)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    codes = y_true * k + y_pred
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        cm = np.bincount(codes[rng.integers(0, n, n)], minlength=k * k).reshape(k, k)
        for name, value in _from_confusion(cm).items():
            samples.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    return {name: [float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100 - tail))]
            for name, v in samples.items()}


def calibration(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error of the top-class confidence, with the per-bin table of the reliability plot."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        acc = float(correct[mask].mean()) if n else None
        mean_conf = float(conf[mask].mean()) if n else None
        if n:
            ece += n / len(conf) * abs(acc - mean_conf)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n, "accuracy": acc,
                      "confidence": mean_conf})
    return {"ece": float(ece), "bins": table}


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray) -> dict:
    labels = list(range(len(CLASSES)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                                     zero_division=0)
    out = {}
    for k, name in enumerate(CLASSES):
        negatives = y_true != k
        tn = int(((y_pred != k) & negatives).sum())
        positives = int((y_true == k).sum())
        auc = (float(roc_auc_score(y_true == k, probs[:, k]))
               if 0 < positives < len(y_true) else None)  # undefined with one class only
        out[name] = {"precision": float(precision[k]), "recall": float(recall[k]),
                     "specificity": float(tn / negatives.sum()) if negatives.any() else None,
                     "f1": float(f1[k]), "roc_auc_ovr": auc, "support": int(support[k])}
    return out


def full_report(ev: Evaluation, n_boot: int = 1000, seed: int = 0, ece_bins: int = 10) -> dict:
    """Everything issue 4 asks of an evaluation, as one JSON-ready dict (the split is named in it)."""
    y_pred = ev.probs.argmax(1)
    cm = np.asarray(ev.metrics[f"{ev.split}_confusion_matrix"])
    rows = cm.sum(1, keepdims=True)
    per_class = _per_class(ev.y_true, y_pred, ev.probs)
    aucs = [c["roc_auc_ovr"] for c in per_class.values() if c["roc_auc_ovr"] is not None]
    report = {
        "split": ev.split,
        "n": int(len(ev.y_true)),
        "classes": list(CLASSES),
        **{name: ev.metrics[f"{ev.split}_{name}"] for name in HEADLINE},
        "macro_roc_auc_ovr": float(np.mean(aucs)) if aucs else None,
        "ci95": bootstrap_ci(ev.y_true, y_pred, n_boot, seed),
        "bootstrap_samples": n_boot,
        "majority_class_macro_f1": majority_baseline_macro_f1(ev.y_true),
        "per_class": per_class,
        "calibration": calibration(ev.y_true, ev.probs, ece_bins),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_row_normalised": np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0).round(4).tolist(),
        "by_origin": by_origin(ev) if ev.origins else None,
    }
    report["ece"] = report["calibration"]["ece"]
    return report


def by_origin(ev: Evaluation) -> dict:
    """Per origin: n, class counts, accuracy and per-class recall. A per-class origin makes these the same
    numbers as per class: read them as 'does the model work on films from this hospital', not as a new test."""
    out = {}
    origins = np.asarray(ev.origins)
    y_pred = ev.probs.argmax(1)
    for origin in sorted(set(ev.origins)):
        mask = origins == origin
        yt, yp = ev.y_true[mask], y_pred[mask]
        out[origin] = {
            "n": int(mask.sum()),
            "class_counts": {c: int((yt == k).sum()) for k, c in enumerate(CLASSES)},
            "accuracy": float((yt == yp).mean()),
            "recall": {c: float((yp[yt == k] == k).mean()) for k, c in enumerate(CLASSES) if (yt == k).any()},
            "confusion_matrix": confusion_matrix(yt, yp, labels=list(range(len(CLASSES)))).tolist(),
        }
    return out


def flat_metrics(report: dict) -> dict[str, float]:
    """MLflow metric names for a report: <split>_accuracy, <split>_accuracy_ci_low, <split>_f1_covid, ..."""
    p = f"{report['split']}_"
    out = {p + name: float(report[name]) for name in HEADLINE}
    for name, (low, high) in report["ci95"].items():
        out[f"{p}{name}_ci_low"], out[f"{p}{name}_ci_high"] = low, high
    out[p + "ece"] = report["ece"]
    if report["macro_roc_auc_ovr"] is not None:
        out[p + "macro_roc_auc_ovr"] = report["macro_roc_auc_ovr"]
    for cls, values in report["per_class"].items():
        for name in ("precision", "recall", "specificity", "f1", "roc_auc_ovr"):
            if values[name] is not None:
                out[f"{p}{name}_{metric_key(cls)}"] = float(values[name])
    return {k: v for k, v in out.items() if np.isfinite(v)}


def plot_reliability(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = report["calibration"]["bins"]
    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=100)
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"]
    ax.bar(centers, [b["accuracy"] or 0 for b in bins], width=width * 0.9, color="#4c72b0", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for c, b in zip(centers, bins):
        if b["n"]:
            ax.text(c, 0.02, str(b["n"]), ha="center", fontsize=7, color="white")
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{report['split']} split (n={report['n']}), ECE={report['ece']:.3f}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return save_figure(fig, path)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_report(report: dict, title: str = "") -> str:
    s, ci = report["split"], report["ci95"]
    lines = [f"{title or 'Evaluation'}: {s} split, n={report['n']}"]
    for name in HEADLINE:
        low, high = ci[name]
        lines.append(f"  {s} {name:<18} {report[name]:.3f}  (95% CI {low:.3f}-{high:.3f}, bootstrap)")
    lines.append(f"  {s} macro ROC-AUC (OvR)  {_fmt(report['macro_roc_auc_ovr'])}")
    lines.append(f"  {s} ECE (10 bins)        {report['ece']:.3f}")
    lines.append(f"  {s} majority-class macro-F1 {report['majority_class_macro_f1']:.3f}")
    lines.append(f"\n  {'class':<16} {'n':>5} {'precision':>9} {'recall':>7} {'specif.':>8} {'F1':>6} {'AUC':>6}")
    for cls, v in report["per_class"].items():
        lines.append(f"  {cls:<16} {v['support']:>5} {_fmt(v['precision']):>9} {_fmt(v['recall']):>7} "
                     f"{_fmt(v['specificity']):>8} {_fmt(v['f1']):>6} {_fmt(v['roc_auc_ovr']):>6}")
    lines.append(f"\n  {s} confusion matrix (rows true, cols predicted: {', '.join(CLASSES)}), counts | row share")
    for cls, counts, share in zip(CLASSES, report["confusion_matrix"], report["confusion_matrix_row_normalised"]):
        lines.append(f"  {cls:<16} {str(counts):<22} {' '.join(f'{x:.2f}' for x in share)}")
    if report.get("by_origin"):
        lines.append(f"\n  {s} split by origin: n, accuracy, recall per class present")
        for origin, v in report["by_origin"].items():
            recalls = ", ".join(f"{c} {r:.2f}" for c, r in v["recall"].items())
            lines.append(f"  {origin:<36} {v['n']:>5} {v['accuracy']:.3f}  {recalls}")
    return "\n".join(lines)


def log_report(client, run_id: str, report: dict, title: str = "") -> dict[str, float]:
    """Metrics, the JSON and the two pictures (confusion matrix, reliability) under evaluation/ in the run."""
    from mlflow.entities import Metric
    import time

    metrics = flat_metrics(report)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    s = report["split"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{s}_evaluation.json").write_text(json.dumps(report, indent=1))
        plot_confusion_matrix(report["confusion_matrix"], Path(tmp) / f"{s}_confusion_matrix.png",
                              f"{s} split (n={report['n']}) {title}".strip())
        plot_reliability(report, Path(tmp) / f"{s}_reliability.png")
        client.log_artifacts(run_id, tmp, "evaluation")
    return metrics


# ---- the command -----------------------------------------------------------------------------------------------

@dataclass
class TestSet:
    """The locked test split of a dataset, ready to evaluate any model on."""

    root: Path
    manifest: Manifest
    subset: Path
    cache_root: Path
    origins: dict[str, str]


def locked_test_set(data: str | Path | None, workdir: Path, sources: Path | None = None,
                    limit_per_class: int | None = None, seed: int = 0) -> TestSet:
    """Update the manifest (the split stays locked) and write the test file list; origins from the manifest,
    or from a sources CSV when given."""
    from tune_ct.data import prepare
    from tune_ct.manifest import read_sources

    prep = prepare(data, workdir, sources, seed, limit_per_class, log=lambda *a, **k: None)
    if prep.report.test_missing or prep.report.test_changed:
        print("WARNING: the locked test split changed since it was locked (see `python -m tune_ct.data`); "
              "figures are not comparable with earlier ones", file=sys.stderr)
    origins = {e.file: e.origin for e in prep.manifest.entries if e.origin != "unknown"}
    origins.update(read_sources(sources))
    subset = write_test_subset(prep.manifest, prep.root, workdir, limit_per_class, seed)
    return TestSet(prep.root, prep.manifest, subset, workdir / "cache", origins)


def evaluate_on(model, meta: dict, test: TestSet) -> Evaluation:
    return evaluate_model(model, int(meta["image_size"]), test.subset, test.cache_root, origins=test.origins)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tune_ct.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a checkpoint folder")
    p.add_argument("--data", help="dataset folder (default: the one the model was trained on, else $TUNE_CT_DATA)")
    p.add_argument("--sources", type=Path, help="CSV with file,origin columns: adds the by-origin breakdown")
    p.add_argument("--workdir", type=Path, help="manifests and caches (default $TUNE_CT_WORKDIR or ./.tune_ct)")
    p.add_argument("--limit-per-class", type=int, help="evaluate on the locked test images of an N-per-class sample")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (--limit-per-class) and the bootstrap")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    p.add_argument("--log-run", help="also log the metrics, JSON and pictures to this MLflow run id")
    p.add_argument("--json", type=Path, help="write the full report here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from tune_ct.data import default_workdir
    from tune_ct.registry import ModelLoadError, load_model, resolve_tracking_uri

    args = parse_args(argv)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        model, meta = load_model(args.model, tracking_uri)
        test = locked_test_set(args.data or meta.get("data"), (args.workdir or default_workdir()).resolve(),
                               args.sources, args.limit_per_class, args.seed)
    except (ModelLoadError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ev = evaluate_on(model, meta, test)
    report = full_report(ev, args.bootstrap, args.seed)
    report.update({"model": args.model, "manifest_hash": test.manifest.hash, "data": str(test.root)})
    print(format_report(report, f"{args.model} ({meta.get('backbone')}, {meta.get('image_size')}px)"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if args.log_run:
        from mlflow.tracking import MlflowClient

        log_report(MlflowClient(tracking_uri), args.log_run, report, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
