"""Score a model on an external set (films from another hospital): does the model hold up outside its data?

The films go through the same subset file, image cache and resize as the locked test split, so the figures differ
only by the films. The report covers the classes the set has (macro-F1 over those), keeps the 4x4 confusion
matrix, and counts the films called a class the set does not have.
"""

from __future__ import annotations


from tune_ct.data.external_set import EXTERNAL_SPLIT, ExternalSet
from tune_ct.data.subsets import write_subset
from tune_ct.data.workdir import WorkFolder
from tune_ct.evaluate.evaluation import TestSet, evaluate_on
from tune_ct.evaluate.full_report import format_report, full_report
from tune_ct.model.checkpoint import CheckpointMeta

LISTED = 5  # files named on the console per kind of problem; the JSON lists all


def external_test_set(ext: ExternalSet, work: WorkFolder) -> TestSet:
    """The set's films as a TestSet (its file list written; a CSV row outside the folder stays absolute: the
    cache reads data_root / file)."""
    path = work.subset(f"external-{ext.name}-{ext.content_hash}")
    write_subset(path, ext.root, ext.entries, f"external-{ext.content_hash}")
    return TestSet(ext.root, path, work.cache, ext.origins(), split=EXTERNAL_SPLIT)


def external_fields(ext: ExternalSet) -> dict:
    return {
        "name": ext.name,
        "content_hash": ext.content_hash,
        "root": str(ext.root),
        "labels_csv": str(ext.labels_csv) if ext.labels_csv else None,
        "classes_present": ext.classes_present,
        "class_counts": ext.class_counts(),
        "unreadable": [{"file": s.file, "reason": s.reason} for s in ext.unreadable],
        "ignored": [{"file": s.file, "reason": s.reason} for s in ext.ignored],
    }


def score_external(model, meta: CheckpointMeta, ext: ExternalSet, work: WorkFolder, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """The full report of `model` on the external set, over the classes it has, with the set's identity."""
    ev = evaluate_on(model, meta, external_test_set(ext, work))
    report = full_report(ev, n_boot, seed, classes=ext.classes_present)
    report.update(external_fields(ext))
    report["per_class_recall"] = {c: v["recall"] for c, v in report["per_class"].items()}
    return report


def _listed(kind: str, items: list[dict]) -> list[str]:
    if not items:
        return [f"  {kind}: 0"]
    more = f" (first {LISTED}; all in --json)" if len(items) > LISTED else ""
    return [f"  {kind}: {len(items)}{more}"] + [f"    {s['file']}: {s['reason']}" for s in items[:LISTED]]


def format_external(report: dict, model_title: str) -> str:
    """A header naming the set (n, content hash, what was not scored), then the usual report."""
    counts = ", ".join(f"{c} {n}" for c, n in report["class_counts"].items())
    source = f"labels {report['labels_csv']}" if report["labels_csv"] else "class folders"
    lines = [f"External set {report['name']}: n={report['n']} films scored ({counts}), content hash "
             f"{report['content_hash']}", f"  from {report['root']} ({source})"]
    lines += _listed("unreadable", report["unreadable"]) + _listed("ignored", report["ignored"])
    return "\n".join(lines) + "\n\n" + format_report(report, f"{model_title} on external set {report['name']}")
