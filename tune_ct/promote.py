"""Promote a registered model to `@champion` if it passes the gates on the locked test split.

    python -m tune_ct.promote --model NAME [--version V] [--gates FILE] [--dry-run]

The candidate (default: the newest version) and the current champion are evaluated on the same locked test
split. On pass, alias `champion` moves to the candidate, the old champion keeps alias `previous`, and the
candidate's version gets an audit trail (tags `tune_ct.promotion.*`). On fail nothing changes and the exit
status is 1 (2 for a usage or loading error).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tune_ct.files import CLASSES, DataError

DEFAULT_GATES = Path(__file__).with_name("gates.yaml")
GATE_DEFAULTS = {"min_macro_f1": 0.70, "min_covid_recall": 0.80, "max_class_drop": 0.05, "per_class_metric": "recall"}
PER_CLASS_METRICS = ("recall", "precision", "f1", "specificity")


class GateError(ValueError):
    """A gates file that cannot be used."""


def load_gates(path: Path | None) -> dict:
    path = Path(path or DEFAULT_GATES)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise GateError(f"cannot read gates file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise GateError(f"gates file {path}: expected a mapping of gate: value")
    unknown = set(raw) - set(GATE_DEFAULTS)
    if unknown:
        raise GateError(f"gates file {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(GATE_DEFAULTS)}")
    gates = {**GATE_DEFAULTS, **raw}
    for key in ("min_macro_f1", "min_covid_recall", "max_class_drop"):
        value = gates[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise GateError(f"gates file {path}: {key} must be a number in [0, 1], got {value!r}")
    if gates["per_class_metric"] not in PER_CLASS_METRICS:
        raise GateError(f"gates file {path}: per_class_metric must be one of {', '.join(PER_CLASS_METRICS)}")
    return gates


@dataclass
class GateResult:
    gate: str
    threshold: float
    value: float | None
    passed: bool
    detail: str


def check_gates(gates: dict, candidate: dict, champion: dict | None) -> list[GateResult]:
    """candidate / champion: full_report dicts from the same test split."""
    out = [
        GateResult("min_macro_f1", gates["min_macro_f1"], candidate["macro_f1"],
                   candidate["macro_f1"] >= gates["min_macro_f1"], "candidate macro-F1"),
        GateResult("min_covid_recall", gates["min_covid_recall"], candidate["per_class"]["COVID"]["recall"],
                   candidate["per_class"]["COVID"]["recall"] >= gates["min_covid_recall"], "candidate COVID recall"),
    ]
    metric = gates["per_class_metric"]
    if champion is None:
        out.append(GateResult("max_class_drop", gates["max_class_drop"], None, True, "no champion yet: skipped"))
        return out
    for cls in CLASSES:
        new, old = candidate["per_class"][cls][metric], champion["per_class"][cls][metric]
        if new is None or old is None:
            continue
        drop = old - new
        out.append(GateResult(f"max_class_drop[{cls}]", gates["max_class_drop"], drop,
                              drop <= gates["max_class_drop"] + 1e-12,
                              f"{metric} {cls}: champion {old:.3f} -> candidate {new:.3f}"))
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tune_ct.promote", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="registered model name (e.g. cxr-classifier)")
    p.add_argument("--version", help="candidate version (default: the newest)")
    p.add_argument("--gates", type=Path, help=f"gates YAML (default {DEFAULT_GATES})")
    p.add_argument("--dry-run", action="store_true", help="evaluate and check the gates; change nothing")
    p.add_argument("--data", help="dataset folder (default: the one the candidate was trained on, else $TUNE_CT_DATA)")
    p.add_argument("--sources", type=Path, help="CSV with file,origin columns (by-origin figures)")
    p.add_argument("--workdir", type=Path, help="manifests and caches (default $TUNE_CT_WORKDIR or ./.tune_ct)")
    p.add_argument("--limit-per-class", type=int, help="use the test images of an N-per-class sample (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    p.add_argument("--json", type=Path, help="write the decision, gates and both evaluations here")
    return p.parse_args(argv)


def promote(args) -> int:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tune_ct.data import default_workdir
    from tune_ct.evaluate import evaluate_on, format_report, full_report, locked_test_set
    from tune_ct.registry import load_model, resolve_tracking_uri, resolve_version

    gates = load_gates(args.gates)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    client = MlflowClient(tracking_uri)
    candidate = resolve_version(client, args.model, args.version)
    try:
        champion = client.get_model_version_by_alias(args.model, "champion")
    except MlflowException:
        champion = None
    if champion is not None and champion.version == candidate.version:
        print(f"{args.model} version {candidate.version} is already @champion; nothing to do")
        return 0

    test = locked_test_set(args.data or candidate.tags.get("tune_ct.data"),
                           (args.workdir or default_workdir()).resolve(), args.sources, args.limit_per_class, args.seed)
    reports = {}
    for role, version in (("candidate", candidate), ("champion", champion)):
        if version is None:
            continue
        model, meta = load_model(f"models:/{args.model}/{version.version}", tracking_uri)
        reports[role] = full_report(evaluate_on(model, meta, test), seed=args.seed)
        print(format_report(reports[role], f"{role} {args.model} v{version.version} ({meta['backbone']}, "
                                           f"{meta['image_size']}px)") + "\n")
    results = check_gates(gates, reports["candidate"], reports.get("champion"))
    passed = all(r.passed for r in results)
    n = reports["candidate"]["n"]
    print(f"Gates (locked test split, n={n}, manifest {test.manifest.hash}):")
    for r in results:
        value = "-" if r.value is None else f"{r.value:.3f}"
        print(f"  {'PASS' if r.passed else 'FAIL'}  {r.gate:<32} value {value:>6}  limit {r.threshold:.3f}  ({r.detail})")

    audit = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": getpass.getuser(), "decision": "pass" if passed else "fail",
        "candidate_version": candidate.version, "previous_champion": champion.version if champion else None,
        "split": "test", "n": n, "manifest_hash": test.manifest.hash, "data": str(test.root), "gates": gates,
        "results": [r.__dict__ for r in results],
        "metrics": {role: {"macro_f1": r["macro_f1"], "accuracy": r["accuracy"],
                           "balanced_accuracy": r["balanced_accuracy"],
                           "recall": {c: v["recall"] for c, v in r["per_class"].items()}}
                    for role, r in reports.items()},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**audit, "reports": reports}, indent=1))
    if not passed:
        failed = ", ".join(r.gate for r in results if not r.passed)
        print(f"\nNOT promoted: {args.model} v{candidate.version} failed {failed}; aliases unchanged", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"\ndry run: {args.model} v{candidate.version} would become @champion; nothing changed")
        return 0
    # Audit first, then aliases: a crash in between leaves a tagged but unpromoted version, never the reverse.
    tags = {
        "tune_ct.promotion.time": audit["time"], "tune_ct.promotion.user": audit["user"],
        "tune_ct.promotion.decision": "promoted to champion",
        "tune_ct.promotion.previous_champion": str(audit["previous_champion"] or "none"),
        "tune_ct.promotion.test_split": json.dumps({"n": n, "manifest_hash": test.manifest.hash}),
        "tune_ct.promotion.gates": json.dumps(gates),
        "tune_ct.promotion.gate_results": json.dumps([[r.gate, r.value, r.passed] for r in results])[:5000],
        "tune_ct.promotion.metrics": json.dumps(audit["metrics"]["candidate"])[:5000],
    }
    for key, value in tags.items():
        client.set_model_version_tag(args.model, candidate.version, key, value)
    if champion is not None:
        client.set_registered_model_alias(args.model, "previous", champion.version)
        client.set_model_version_tag(args.model, champion.version, "tune_ct.demoted", f"{audit['time']} by "
                                     f"v{candidate.version}")
    client.set_registered_model_alias(args.model, "champion", candidate.version)
    print(f"\npromoted {args.model} v{candidate.version} to @champion"
          + (f" (v{champion.version} is now @previous)" if champion else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    from tune_ct.registry import ModelLoadError

    args = parse_args(argv)
    try:
        return promote(args)
    except (GateError, ModelLoadError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
