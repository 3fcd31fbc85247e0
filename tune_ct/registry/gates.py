"""Promotion gates: what a candidate must reach on the locked test split, alone and against the champion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tune_ct.data.files import CLASSES

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
