"""Promotion gates: what a candidate must reach on the locked test split, alone and against the champion, and
on named external sets (scored beforehand by `python -m tune_ct.evaluate --external`, read from version tags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tune_ct.data.external_set import NAME_PATTERN
from tune_ct.data.files import CLASSES
from tune_ct.track import tags

DEFAULT_GATES = Path(__file__).with_name("gates.yaml")
GATE_DEFAULTS = {"min_macro_f1": 0.70, "min_covid_recall": 0.80, "max_class_drop": 0.05, "per_class_metric": "recall",
                 "min_external_macro_f1": {}}
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
        if not _is_fraction(value):
            raise GateError(f"gates file {path}: {key} must be a number in [0, 1], got {value!r}")
    if gates["per_class_metric"] not in PER_CLASS_METRICS:
        raise GateError(f"gates file {path}: per_class_metric must be one of {', '.join(PER_CLASS_METRICS)}")
    check_external_gates(path, gates["min_external_macro_f1"])
    return gates


def _is_fraction(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 1


def check_external_gates(path: Path, external) -> None:
    """min_external_macro_f1: a mapping of external set name -> minimum macro-F1 in [0, 1] (empty: none)."""
    if external is None:
        raise GateError(f"gates file {path}: min_external_macro_f1 is empty; give NAME: minimum pairs, e.g. "
                        "`min_external_macro_f1: {hospital-b: 0.6}`, or remove the key")
    if not isinstance(external, dict):
        raise GateError(f"gates file {path}: min_external_macro_f1 must be a mapping of external set name to a "
                        f"minimum macro-F1, e.g. `{{hospital-b: 0.6}}`, got {external!r}")
    for name, value in external.items():
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise GateError(f"gates file {path}: min_external_macro_f1 name {name!r} is not an external set name "
                            "(letters, digits, '_' and '-', as given to `python -m tune_ct.evaluate --name`)")
        if not _is_fraction(value):
            raise GateError(f"gates file {path}: min_external_macro_f1[{name}] must be a number in [0, 1], "
                            f"got {value!r}")


@dataclass
class GateResult:
    gate: str
    threshold: float
    value: float | None
    passed: bool
    detail: str


def check_gates(gates: dict, candidate: dict, champion: dict | None,
                candidate_tags: dict | None = None) -> list[GateResult]:
    """candidate / champion: full_report dicts from the same test split; candidate_tags: the candidate version's
    registry tags, where `python -m tune_ct.evaluate --external` left its external figures."""
    out = [
        GateResult("min_macro_f1", gates["min_macro_f1"], candidate["macro_f1"],
                   candidate["macro_f1"] >= gates["min_macro_f1"], "candidate macro-F1"),
        GateResult("min_covid_recall", gates["min_covid_recall"], candidate["per_class"]["COVID"]["recall"],
                   candidate["per_class"]["COVID"]["recall"] >= gates["min_covid_recall"], "candidate COVID recall"),
    ]
    out += external_gates(gates.get("min_external_macro_f1") or {}, candidate_tags or {}, candidate.get("model"))
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


def _number(raw) -> float | None:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None


def external_gates(minimums: dict, version_tags: dict, model: str | None) -> list[GateResult]:
    """One gate per named external set: the macro-F1 tag at least the minimum. No tag, no pass: the candidate
    has not been scored on that set yet."""
    out = []
    for name, minimum in minimums.items():
        key = tags.external_figure(name, "macro_f1")
        raw, value = version_tags.get(key), _number(version_tags.get(key))
        if value is None:
            what = f"no tag {key}" if raw is None else f"tag {key} is {raw!r}, not a number"
            detail = (f"{what}: run `python -m tune_ct.evaluate --model {model or 'models:/M/V'} --external DIR "
                      f"--name {name}` first")
        else:
            detail = f"macro-F1 on external set {name} (hash {version_tags.get(tags.external_figure(name, 'hash'))})"
        out.append(GateResult(f"min_external_macro_f1[{name}]", minimum, value,
                              value is not None and value >= minimum, detail))
    return out
