"""How well does the val metric after epoch k rank trials by their final value? (Sets ASHA's grace period.)

    python bench/early_stopping.py --data DIR --limit-per-class 500 --trials 12 --out bench/results/early_stopping.json

Runs a real search with no early stopping (`--scheduler none`: every trial runs all its epochs) over the CPU
spaces' backbones and sizes (baseline_cnn and resnet10t, 48 to 96 px, 4 epochs, the cpu_quick / cpu_pareto
ranges), reads every trial's per-epoch val macro-F1 from MLflow, and reports for each k the Spearman rank
correlation of the epoch-k value with the final value and with the best value, and, for each ASHA setting, how
often successive halving on these very curves would have stopped the trial that ended best (or one of the top 3).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from machine import cpu_model  # bench/machine.py (the script's folder is on sys.path)

SPACE = {"description": "the CPU spaces' backbones and sizes, every trial to its last epoch",
         "search": {"metric": "val_macro_f1", "max_concurrent": 2, "runner": "actor"},
         "params": {"backbone": {"choice": ["baseline_cnn", "resnet10t"]}, "image_size": {"choice": [48, 64, 96]},
                    "epochs": 4, "batch_size": {"choice": [32, 64]}, "lr": {"loguniform": [3.0e-4, 3.0e-3]},
                    "weight_decay": {"loguniform": [1.0e-5, 1.0e-3]}, "aug_rotation_deg": {"uniform": [0.0, 8.0]},
                    "aug_crop_scale_min": {"uniform": [0.8, 1.0]}}}


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def curves(folder: Path, parent_id: str) -> list[list[float]]:
    """Each trial's val macro-F1 by epoch (trials that ran every epoch)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    out = []
    for run in runs:
        history = sorted(client.get_metric_history(run.info.run_id, "val_macro_f1"), key=lambda m: m.step)
        values = [m.value for m in history]
        if len(values) == SPACE["params"]["epochs"]:
            out.append(values)
    return out


def asha_keeps(curves_: list[list[float]], grace: int, rf: int, target: set[int]) -> bool:
    """Successive halving on recorded curves (rungs at grace, grace*rf, ...): does a trial of `target` survive?"""
    alive, rung = list(range(len(curves_))), grace
    epochs = len(curves_[0])
    while rung < epochs and len(alive) > 1:
        keep = max(1, len(alive) // rf)
        alive = sorted(alive, key=lambda i: -curves_[i][rung - 1])[:keep]
        rung *= rf
    return bool(set(alive) & target)


def analyse(curves_: list[list[float]]) -> dict:
    final, best = [c[-1] for c in curves_], [max(c) for c in curves_]
    epochs = len(curves_[0])
    order = sorted(range(len(curves_)), key=lambda i: -best[i])
    rho = {f"epoch_{k}": {"vs_final": round(spearman([c[k - 1] for c in curves_], final), 3),
                          "vs_best": round(spearman([c[k - 1] for c in curves_], best), 3)}
           for k in range(1, epochs)}
    asha = {f"grace_{g}_rf_{rf}": {"keeps_best": asha_keeps(curves_, g, rf, set(order[:1])),
                                    "keeps_a_top3": asha_keeps(curves_, g, rf, set(order[:3]))}
            for g, rf in itertools.product((1, 2), (2, 3))}
    return {"trials": len(curves_), "spearman": rho, "asha_on_these_curves": asha}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--limit-per-class", type=int, default=500)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--time-budget", default="20m")
    p.add_argument("--out", type=Path, default=Path("bench/results/early_stopping.json"))
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-es-"))
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    cmd = [sys.executable, "-m", "tune_ct.search", "--data", args.data, "--space", str(folder / "space.yaml"),
           "--limit-per-class", str(args.limit_per_class), "--num-samples", str(args.trials), "--sampler", "random",
           "--scheduler", "none", "--time-budget", args.time_budget, "--register-name", "", "--summary",
           "summary.json"]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stdout[-3000:] + proc.stderr[-3000:])
        return 1
    summary = json.loads((folder / "summary.json").read_text())
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
              "command": " ".join(cmd), "seconds": round(time.monotonic() - started),
              **analyse(curves(folder, summary["parent_run_id"]))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "command"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
