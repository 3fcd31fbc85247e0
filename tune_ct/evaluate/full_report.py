"""The full evaluation report: headline figures with CIs, per class, calibration, by origin; as JSON, as text
for the console, and logged to MLflow with its pictures."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from tune_ct.data.files import CLASSES
from tune_ct.evaluate.evaluation import Evaluation
from tune_ct.evaluate.metrics import majority_baseline_macro_f1, metric_key
from tune_ct.evaluate.statistics import bootstrap_ci, by_origin, calibration, class_indices, per_class_figures
from tune_ct.track.figures import plot_confusion_matrix, pyplot, save_figure

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1")


def full_report(ev: Evaluation, n_boot: int = 1000, seed: int = 0, ece_bins: int = 10, classes=None) -> dict:
    """Everything an evaluation reports, as one JSON-ready dict (the split is named in it).

    `classes`: the classes the figures cover, default all four; an external set passes the classes it has, so
    macro-F1 (and its bootstrap) is not pulled down by an F1 of 0 for a class with no films. The confusion
    matrix stays 4x4: predictions of the other classes are errors, counted and reported as shares."""
    covered = class_indices(classes)
    subset = None if len(covered) == len(CLASSES) else [CLASSES[k] for k in covered]
    y_pred = ev.probs.argmax(1)
    cm = np.asarray(ev.metrics[f"{ev.split}_confusion_matrix"])
    rows = cm.sum(1, keepdims=True)
    per_class = per_class_figures(ev.y_true, y_pred, ev.probs, subset)
    aucs = [c["roc_auc_ovr"] for c in per_class.values() if c["roc_auc_ovr"] is not None]
    report = {
        "split": ev.split,
        "n": int(len(ev.y_true)),
        "classes": [CLASSES[k] for k in covered],
        **{name: ev.metrics[f"{ev.split}_{name}"] for name in HEADLINE},
        "macro_roc_auc_ovr": float(np.mean(aucs)) if aucs else None,
        "ci95": bootstrap_ci(ev.y_true, y_pred, n_boot, seed, classes=subset),
        "bootstrap_samples": n_boot,
        "majority_class_macro_f1": majority_baseline_macro_f1(ev.y_true, covered if subset else None),
        "per_class": per_class,
        "calibration": calibration(ev.y_true, ev.probs, ece_bins),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_row_normalised": np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0).round(4).tolist(),
        "by_origin": by_origin(ev.y_true, y_pred, ev.origins) if ev.origins else None,
    }
    report["ece"] = report["calibration"]["ece"]
    if subset:
        report.update(_over_covered(ev.y_true, y_pred, covered))
    return report


def _over_covered(y_true: np.ndarray, y_pred: np.ndarray, covered: list[int]) -> dict:
    """Macro-F1 over the covered classes, and how many films were called one of the others."""
    absent = [k for k in range(len(CLASSES)) if k not in covered]
    return {
        "macro_f1": float(f1_score(y_true, y_pred, labels=covered, average="macro", zero_division=0)),
        "absent_classes": [CLASSES[k] for k in absent],
        "predicted_as_absent": {CLASSES[k]: float((y_pred == k).mean()) for k in absent},
        "n_predicted_as_absent": int(np.isin(y_pred, absent).sum()),
    }


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
    for cls, share in report.get("predicted_as_absent", {}).items():
        out[f"{p}predicted_as_{metric_key(cls)}"] = share
    return {k: v for k, v in out.items() if np.isfinite(v)}


def plot_reliability(report: dict, path: Path) -> Path:
    plt = pyplot()
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
    if report.get("absent_classes"):
        lines.append(f"  {s} macro-F1 and balanced accuracy cover the classes present: "
                     + ", ".join(report["classes"]))
        lines.append(f"  {s} films called a class the set does not have: {report['n_predicted_as_absent']} of "
                     f"{report['n']} (" + ", ".join(f"{c} {v:.1%}" for c, v in report["predicted_as_absent"].items())
                     + ")")
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


