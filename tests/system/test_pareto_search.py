"""A real small multi-objective search (local Ray, Optuna's multi-objective TPE, MLflow on SQLite, real films):
the Pareto front in the summary, on the parent run and in the study, and the registered model picked by the rule."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from helpers.search_cli import run_search_cli
from mlflow.tracking import MlflowClient

from tune_ct.train.pareto import dominates

SPACE = """description: test-sized multi-objective search
search:
  objectives: {val_macro_f1: max, cpu_ms_per_film: min}
  pick: {best: val_macro_f1, limits: {cpu_ms_per_film: 1000.0}}
  num_samples: 3
  max_concurrent: 2
params:
  backbone: {choice: [baseline_cnn, resnet10t]}
  image_size: 32
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  batch_size: 16
  epochs: 1
"""


def test_multi_objective_search_registers_the_member_of_the_front_its_rule_picks(tmp_path, dev_films):
    (tmp_path / "pareto.yaml").write_text(SPACE)
    proc, summary = run_search_cli(tmp_path, dev_films, "pareto.yaml", "--name", "front")
    objectives = tuple(summary["objectives"].items())
    assert objectives == (("val_macro_f1", "max"), ("cpu_ms_per_film", "min"))
    points, front = summary["trial_points"], summary["pareto_front"]
    assert len(points) == summary["trials"] == 3 and front
    # The front is exactly the non-dominated trials; the picked one meets the rule and is what was tested.
    for p in points:
        on_front = p["trial_id"] in {m["trial_id"] for m in front}
        assert on_front == (not any(dominates(q, p, objectives) for q in points))
    picked = [m for m in front if m["picked"]]
    assert len(picked) == 1 and summary["pick"]["met"] and picked[0]["trial_id"] == summary["best_trial_id"]
    assert picked[0]["val_macro_f1"] == max(m["val_macro_f1"] for m in front)
    assert summary["best_costs"]["cpu_ms_per_film"] == pytest.approx(picked[0]["cpu_ms_per_film"])
    assert "Pareto front on the val split" in proc.stdout and "* " + picked[0]["trial_id"] in proc.stdout

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)  # registered models too: an earlier test may set MLflow's own
    parent = client.get_run(summary["parent_run_id"])
    assert {"pareto_front.png", "pareto_front.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert parent.data.params["scheduler"] == "none" and parent.data.tags["tune_ct.pick_met"] == "true"
    for member in front:
        child = client.get_run(member["run_id"])
        assert child.data.tags["tune_ct.pareto_front"] == ("picked" if member["picked"] else "true")
        history = client.get_metric_history(member["run_id"], "val_macro_f1")
        assert member["val_macro_f1"] == pytest.approx(max(m.value for m in history))
        assert child.data.metrics["cpu_ms_per_film"] == pytest.approx(member["cpu_ms_per_film"])
        assert member["cpu_ms_per_film"] > 0
        assert child.data.metrics["param_count"] > 0
    source = client.get_model_version("cxr-classifier", str(summary["registered_version"])).tags
    assert source["tune_ct.source_run_id"] == summary["parent_run_id"]

    # The study is multi-objective and holds each trial's best-epoch values, as the front does.
    study = optuna.load_study(study_name="front", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.directions) == 2 and len(study.trials) == 3
    told = sorted(v for t in study.trials for v in t.values)
    assert told == pytest.approx(sorted(v for p in points for v in (p["val_macro_f1"], p["cpu_ms_per_film"])))

    # The search's report shows the front (plot and table) with the registered member marked.
    report = subprocess.run([sys.executable, "-m", "tune_ct.report", "--experiment", "tune_ct", "--out", "report",
                             "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "![Pareto front](pareto_front.png)" in text and (tmp_path / "report" / "pareto_front.png").is_file()
    assert f"| **{picked[0]['trial_id']}** (registered) |" in text
