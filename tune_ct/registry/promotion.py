"""Promote a registered model to `@champion` if it passes the gates on the locked test split (and, with
`min_external_macro_f1`, on external sets it was scored on beforehand: read from its version tags).

The candidate (default: the newest version) and the current champion are evaluated on the same locked test
split. On pass, alias `champion` moves to the candidate, the old champion keeps alias `previous`, and the
candidate's version gets an audit trail (tags `tune_ct.promotion.*`). On fail nothing changes.
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tune_ct.data.prepare import DataSettings, as_recorded
from tune_ct.evaluate.evaluation import TestSet, evaluate_on, locked_test_set
from tune_ct.evaluate.full_report import format_report, full_report
from tune_ct.registry.gates import GateResult, check_gates, load_gates
from tune_ct.registry.models import load_model, resolve_version
from tune_ct.track import tags
from tune_ct.track.uri import ui_address


@dataclass(frozen=True)
class PromoteOptions:
    model: str  # registered model name
    tracking_uri: str
    data: DataSettings  # data None: the folder the candidate was trained on
    version: str | None = None  # default: the newest
    gates: Path | None = None
    dry_run: bool = False
    json: Path | None = None


def promote(options: PromoteOptions) -> int:
    """0: promoted (or would be, or already champion); 1: a gate failed and nothing changed."""
    from tune_ct.track.uri import connect

    gates = load_gates(options.gates)
    client = connect(options.tracking_uri)
    candidate, champion = candidate_and_champion(client, options.model, options.version)
    if champion is not None and champion.version == candidate.version:
        print(f"{options.model} version {candidate.version} is already @champion; nothing to do")
        return 0
    data = options.data
    test = locked_test_set(as_recorded(data, candidate.tags.get(tags.DATA), candidate.tags.get(tags.DATA_SPEC)))
    reports = evaluate_versions(options, test, {"candidate": candidate, "champion": champion})
    results = check_gates(gates, reports["candidate"], reports.get("champion"), candidate.tags)
    print_gates(results, reports["candidate"]["n"], test)
    audit = audit_record(candidate, champion, test, gates, results, reports)
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps({**audit, "reports": reports}, indent=1))
    if audit["decision"] == "fail":
        failed = ", ".join(r.gate for r in results if not r.passed)
        print(f"\nNOT promoted: {options.model} v{candidate.version} failed {failed}; aliases unchanged",
              file=sys.stderr)
        return 1
    if options.dry_run:
        print(f"\ndry run: {options.model} v{candidate.version} would become @champion; nothing changed")
        return 0
    move_champion(client, options.model, candidate, champion, audit)
    base, serve = ui_address(options.tracking_uri)
    print((f"MLflow (start the UI: {serve}): " if serve else "MLflow: ")
          + f"{base}/#/models/{options.model}/versions/{candidate.version}")
    return 0


def candidate_and_champion(client, name: str, version: str | None):
    from mlflow.exceptions import MlflowException

    candidate = resolve_version(client, name, version)
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    return candidate, champion


def evaluate_versions(options: PromoteOptions, test: TestSet, versions: dict) -> dict[str, dict]:
    """The full report of each version (candidate, champion) on the same locked test split."""
    reports = {}
    for role, version in versions.items():
        if version is None:
            continue
        uri = f"models:/{options.model}/{version.version}"
        model, loaded = load_model(uri, options.tracking_uri)
        reports[role] = {**full_report(evaluate_on(model, loaded.checkpoint, test), seed=options.data.seed),
                         "model": uri}
        print(format_report(reports[role], f"{role} {options.model} v{version.version} "
                                           f"({loaded.checkpoint.title})") + "\n")
    return reports


def print_gates(results: list[GateResult], n: int, test: TestSet) -> None:
    print(f"Gates (locked test split, n={n}, manifest {test.manifest.hash}):")
    for r in results:
        value = "-" if r.value is None else f"{r.value:.3f}"
        print(f"  {'PASS' if r.passed else 'FAIL'}  {r.gate:<32} value {value:>6}  limit {r.threshold:.3f}  ({r.detail})")


def audit_record(candidate, champion, test: TestSet, gates: dict, results: list[GateResult], reports: dict) -> dict:
    passed = all(r.passed for r in results)
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": getpass.getuser(), "decision": "pass" if passed else "fail",
        "candidate_version": candidate.version, "previous_champion": champion.version if champion else None,
        "split": "test", "n": reports["candidate"]["n"], "manifest_hash": test.manifest.hash, "data": str(test.root),
        "gates": gates, "results": [r.__dict__ for r in results],
        "metrics": {role: {"macro_f1": r["macro_f1"], "accuracy": r["accuracy"],
                           "balanced_accuracy": r["balanced_accuracy"],
                           "recall": {c: v["recall"] for c, v in r["per_class"].items()}}
                    for role, r in reports.items()},
    }


def move_champion(client, name: str, candidate, champion, audit: dict) -> None:
    """Audit first, then aliases: a crash in between leaves a tagged but unpromoted version, never the reverse."""
    trail = {
        "time": audit["time"], "user": audit["user"], "decision": "promoted to champion",
        "previous_champion": str(audit["previous_champion"] or "none"),
        "test_split": json.dumps({"n": audit["n"], "manifest_hash": audit["manifest_hash"]}),
        "gates": json.dumps(audit["gates"]),
        "gate_results": json.dumps([[r["gate"], r["value"], r["passed"]] for r in audit["results"]])[:5000],
        "metrics": json.dumps(audit["metrics"]["candidate"])[:5000],
    }
    for key, value in trail.items():
        client.set_model_version_tag(name, candidate.version, tags.PROMOTION + key, value)
    if champion is not None:
        client.set_registered_model_alias(name, "previous", champion.version)
        client.set_model_version_tag(name, champion.version, tags.DEMOTED, f"{audit['time']} by "
                                     f"v{candidate.version}")
    client.set_registered_model_alias(name, "champion", candidate.version)
    print(f"\npromoted {name} v{candidate.version} to @champion"
          + (f" (v{champion.version} is now @previous)" if champion else ""))
