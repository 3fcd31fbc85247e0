"""Promotion gates (tune_ct/registry/gates.py): the gates file is checked before use, and each gate decides alone."""

from __future__ import annotations

import pytest

from tune_ct.data.files import CLASSES
from tune_ct.registry.gates import DEFAULT_GATES, GATE_DEFAULTS, GateError, check_gates, load_gates


def write(tmp_path, text: str):
    path = tmp_path / "gates.yaml"
    path.write_text(text)
    return path


def report(macro_f1: float, values: dict[str, float | None] | float, metric: str = "recall") -> dict:
    """A full_report-shaped dict with just what the gates read: `values` per class for `metric` (recall 0.9 when
    the metric is another one, so the COVID recall gate passes)."""
    values = values if isinstance(values, dict) else {c: values for c in CLASSES}
    per_class = {}
    for c in CLASSES:
        per_class[c] = {"recall": 0.9}
        per_class[c][metric] = values[c]
    return {"macro_f1": macro_f1, "per_class": per_class}


def by_gate(results) -> dict:
    return {r.gate: r for r in results}


# ---- load_gates -----------------------------------------------------------------------------------------------

def test_shipped_gates_file_loads_and_only_known_keys():
    gates = load_gates(None)
    assert set(gates) == set(GATE_DEFAULTS)
    assert load_gates(DEFAULT_GATES) == gates
    assert 0 < gates["min_macro_f1"] <= 1 and gates["per_class_metric"] == "recall"


def test_empty_file_and_partial_file_take_the_defaults(tmp_path):
    assert load_gates(write(tmp_path, "")) == GATE_DEFAULTS
    gates = load_gates(write(tmp_path, "min_macro_f1: 0.5\nper_class_metric: f1\n"))
    assert gates["min_macro_f1"] == 0.5 and gates["per_class_metric"] == "f1"
    assert gates["min_covid_recall"] == GATE_DEFAULTS["min_covid_recall"]
    assert gates["max_class_drop"] == GATE_DEFAULTS["max_class_drop"]


def test_unknown_key_is_named_with_the_file(tmp_path):
    path = write(tmp_path, "min_macro_f1: 0.5\nmin_f1_covid: 0.9\n")
    with pytest.raises(GateError) as err:
        load_gates(path)
    assert "min_f1_covid" in str(err.value) and str(path) in str(err.value)
    assert "min_covid_recall" in str(err.value)  # the known keys are listed


@pytest.mark.parametrize("key, value", [("min_macro_f1", 1.5), ("min_covid_recall", -0.1), ("max_class_drop", 2),
                                        ("min_macro_f1", "0.7"), ("max_class_drop", True), ("min_covid_recall", None)])
def test_out_of_range_or_non_numeric_value_is_refused(tmp_path, key, value):
    import yaml

    path = write(tmp_path, yaml.safe_dump({key: value}))
    with pytest.raises(GateError, match=rf"{key} must be a number in \[0, 1\]") as err:
        load_gates(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0])
def test_range_ends_are_allowed(tmp_path, value):
    assert load_gates(write(tmp_path, f"max_class_drop: {value}\n"))["max_class_drop"] == value


@pytest.mark.parametrize("metric", ["auc", "Recall", "[recall]"])
def test_bad_per_class_metric_is_refused(tmp_path, metric):
    with pytest.raises(GateError, match="per_class_metric must be one of recall, precision, f1, specificity"):
        load_gates(write(tmp_path, f"per_class_metric: {metric}\n"))


def test_missing_file_malformed_yaml_and_non_mapping_are_gate_errors(tmp_path):
    with pytest.raises(GateError, match="cannot read gates file .*nope.yaml"):
        load_gates(tmp_path / "nope.yaml")
    with pytest.raises(GateError, match="cannot read gates file"):
        load_gates(write(tmp_path, "min_macro_f1: [0.5\n"))
    with pytest.raises(GateError, match="expected a mapping"):
        load_gates(write(tmp_path, "- 0.5\n- 0.6\n"))


# ---- check_gates ----------------------------------------------------------------------------------------------

GATES = {"min_macro_f1": 0.7, "min_covid_recall": 0.8, "max_class_drop": 0.05, "per_class_metric": "recall"}


def test_candidate_better_than_champion_passes_every_gate():
    results = check_gates(GATES, report(0.9, 0.9), report(0.8, 0.85))
    assert [r.gate for r in results] == ["min_macro_f1", "min_covid_recall"] + [f"max_class_drop[{c}]" for c in CLASSES]
    assert all(r.passed for r in results)
    drops = by_gate(results)
    assert drops["max_class_drop[Normal]"].value == pytest.approx(0.85 - 0.9)  # negative drop: an improvement


def test_low_macro_f1_fails_only_that_gate():
    results = by_gate(check_gates(GATES, report(0.69, 0.9), None))
    assert not results["min_macro_f1"].passed and results["min_macro_f1"].value == 0.69
    assert results["min_covid_recall"].passed and results["max_class_drop"].passed


def test_low_covid_recall_fails_only_that_gate():
    recall = {"COVID": 0.79, "Lung_Opacity": 1.0, "Normal": 1.0, "Viral Pneumonia": 1.0}
    results = by_gate(check_gates(GATES, report(0.95, recall), None))
    assert not results["min_covid_recall"].passed and results["min_covid_recall"].value == 0.79
    assert results["min_macro_f1"].passed


def test_thresholds_are_inclusive():
    results = check_gates(GATES, report(0.7, 0.8), None)
    assert all(r.passed for r in results)


def test_no_champion_skips_the_class_drop_gate():
    results = check_gates(GATES, report(0.9, 0.9), None)
    assert len(results) == 3
    skipped = results[-1]
    assert skipped.gate == "max_class_drop" and skipped.passed and skipped.value is None
    assert "no champion" in skipped.detail


def test_one_class_dropping_too_far_fails_that_class_only():
    champion = report(0.9, 0.9)
    candidate = report(0.9, {"COVID": 0.95, "Lung_Opacity": 0.84, "Normal": 0.9, "Viral Pneumonia": 0.99})
    results = by_gate(check_gates(GATES, candidate, champion))
    assert not results["max_class_drop[Lung_Opacity]"].passed
    assert results["max_class_drop[Lung_Opacity]"].value == pytest.approx(0.06)
    assert [g for g, r in results.items() if not r.passed] == ["max_class_drop[Lung_Opacity]"]


def test_class_drop_of_exactly_the_limit_passes_and_just_over_fails():
    champion = report(0.9, 0.9)
    # 0.9 - 0.85 is 0.05000000000000004 in floating point: still "exactly" the limit, so it passes.
    at_limit = check_gates(GATES, report(0.9, {**{c: 0.9 for c in CLASSES}, "Normal": 0.85}), champion)
    assert by_gate(at_limit)["max_class_drop[Normal]"].passed
    over = check_gates(GATES, report(0.9, {**{c: 0.9 for c in CLASSES}, "Normal": 0.8499}), champion)
    assert not by_gate(over)["max_class_drop[Normal]"].passed


def test_zero_allowed_drop_refuses_any_drop():
    gates = {**GATES, "max_class_drop": 0.0}
    champion = report(0.9, 0.9)
    assert all(r.passed for r in check_gates(gates, report(0.9, 0.9), champion))
    worse = report(0.9, {**{c: 0.9 for c in CLASSES}, "COVID": 0.89})
    assert not by_gate(check_gates(gates, worse, champion))["max_class_drop[COVID]"].passed


def test_none_per_class_values_are_skipped():
    gates = {**GATES, "per_class_metric": "specificity"}
    champion = report(0.9, {"COVID": 0.9, "Lung_Opacity": None, "Normal": 0.9, "Viral Pneumonia": 0.9},
                      metric="specificity")
    candidate = report(0.9, {"COVID": 0.9, "Lung_Opacity": 0.0, "Normal": None, "Viral Pneumonia": 0.5},
                       metric="specificity")
    results = by_gate(check_gates(gates, candidate, champion))
    drop_gates = [g for g in results if g.startswith("max_class_drop[")]
    assert drop_gates == ["max_class_drop[COVID]", "max_class_drop[Viral Pneumonia]"]  # None on either side: skipped
    assert not results["max_class_drop[Viral Pneumonia]"].passed
    assert "specificity Viral Pneumonia" in results["max_class_drop[Viral Pneumonia]"].detail


def test_per_class_metric_selects_what_is_compared():
    gates = {**GATES, "per_class_metric": "f1"}
    # Recall identical, F1 falls on COVID: only an f1 gate sees it.
    champion = {"macro_f1": 0.9, "per_class": {c: {"recall": 0.9, "f1": 0.9} for c in CLASSES}}
    candidate = {"macro_f1": 0.9, "per_class": {c: {"recall": 0.9, "f1": 0.7 if c == "COVID" else 0.9}
                                                for c in CLASSES}}
    assert not by_gate(check_gates(gates, candidate, champion))["max_class_drop[COVID]"].passed
    assert all(r.passed for r in check_gates(GATES, candidate, champion))
