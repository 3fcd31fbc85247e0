"""Search efficiency: Optuna TPE + ASHA vs random search without early stopping, same budget in trial-epochs.

    python bench/search_efficiency.py --data DIR --out /tmp/se --seeds 0 1 2 --json bench/results/search_efficiency.json \
        --plot bench/results/search_efficiency.png

Each (method, seed) is one `python -m tune_ct.search` run (a subprocess, as a user runs it) on the same generated
space: random = `--searcher random --scheduler none`, TPE + ASHA = the defaults. The seed picks the data subset
(`--limit-per-class`), the split of the budget between methods does not: both methods of one seed see the same
train/val/test files. Budget spent = epochs reported so far by all trials (one Tune result = one trial-epoch),
ordered by report time. `--analyse-only` re-reads finished runs under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

METHODS = {"random": ["--searcher", "random", "--scheduler", "none"], "tpe_asha": ["--searcher", "tpe", "--scheduler", "asha"]}

SPACE = """description: bench/search_efficiency.py (generated)
search:
  metric: val_macro_f1
  num_samples: 6
  max_concurrent: {max_concurrent}
  grace_period: 1
  reduction_factor: 2
  workers_per_trial: 1
  cpus_per_worker: 1
params:
  backbone: baseline_cnn
  image_size: {image_size}
  lr: {{loguniform: [1.0e-4, 3.0e-2]}}
  weight_decay: {{loguniform: [1.0e-6, 1.0e-2]}}
  batch_size: {{choice: [16, 32, 64]}}
  epochs: {epochs}
  aug_rotation_deg: {{uniform: [0.0, 10.0]}}
  aug_crop_scale_min: {{uniform: [0.6, 1.0]}}
"""


@dataclass
class SearchRun:
    method: str
    seed: int
    budget: list[int]  # trial-epochs spent after each report, in report order
    best: list[float]  # best val macro-F1 seen so far after each report
    trials: int
    winner_val_macro_f1: float
    winner_test_macro_f1: float
    winner_reported_at_budget: int  # trial-epochs spent when the winner's epoch was reported
    seconds: float


def reports(storage: Path, name: str) -> list[dict]:
    """Every Tune result of the search, in the order they were reported."""
    rows = []
    for path in (storage / name).glob("*/result.json"):
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if "val_macro_f1" in r:
                    rows.append({"trial": r["trial_id"], "epoch": r["epoch"], "f1": r["val_macro_f1"],
                                 "t": r["timestamp"], "age": r.get("time_total_s", 0.0)})
    return sorted(rows, key=lambda r: (r["t"], r["age"]))


def analyse(out: Path, method: str, seed: int) -> SearchRun | None:
    name = f"{method}-s{seed}"
    summary_path = out / f"summary-{name}.json"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    rows = reports(out / "ray_results", name)
    best, curve, at = -1.0, [], None
    for i, r in enumerate(rows, 1):
        best = max(best, r["f1"])
        curve.append(best)
        if r["trial"] == summary["best_trial_id"] and r["epoch"] == summary["best_epoch"]:
            at = i
    return SearchRun(method, seed, list(range(1, len(rows) + 1)), curve, summary["trials"],
                     float(summary["val_metrics"]["val_macro_f1"]), float(summary["test_metrics"]["macro_f1"]),
                     at or len(rows), float(summary["seconds"]))


def budget_to_reach(run: SearchRun, target: float) -> int | None:
    for b, v in zip(run.budget, run.best):
        if v >= target - 1e-12:
            return b
    return None


def run_search(args, method: str, seed: int, space: Path, num_samples: int) -> None:
    name = f"{method}-s{seed}"
    if (args.out / f"summary-{name}.json").exists():
        print(f"{name}: done already", flush=True)
        return
    cmd = [sys.executable, "-m", "tune_ct.search", "--data", args.data, "--space", str(space),
           "--limit-per-class", str(args.limit_per_class), "--seed", str(seed), "--num-samples", str(num_samples),
           "--workdir", str(args.out / "wd"), "--storage", str(args.out / "ray_results"), "--name", name,
           "--tracking-uri", f"sqlite:///{args.out / 'mlflow.db'}", "--experiment", "search_efficiency",
           "--summary", str(args.out / f"summary-{name}.json"), *METHODS[method]]
    started = time.monotonic()
    with open(args.out / f"{name}.log", "w") as log:
        code = subprocess.call(cmd, cwd=args.out, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    print(f"{name}: exit {code} in {time.monotonic() - started:.0f}s", flush=True)
    if code:
        raise SystemExit(f"{name} failed; see {args.out / (name + '.log')}")


def plot(runs: list[SearchRun], budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=90)
    colors = {"random": "tab:gray", "tpe_asha": "tab:blue"}
    grid = np.arange(1, budget + 1)
    for method, color in colors.items():
        curves = []
        for r in (r for r in runs if r.method == method):
            y = np.array([r.best[min(b, len(r.best)) - 1] for b in grid])
            curves.append(y)
            ax.step(grid, y, where="post", color=color, alpha=0.3, lw=1)
        if curves:
            ax.step(grid, np.mean(curves, 0), where="post", color=color, lw=2.2,
                    label=f"{method.replace('_', ' + ').upper()} (mean of {len(curves)} seeds)")
    ax.set_xlabel("budget spent (trial-epochs)")
    ax.set_ylabel("best val macro-F1 so far")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, required=True, help="working folder (runs, logs, MLflow, Ray storage)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--limit-per-class", type=int, default=250)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--random-trials", type=int, default=6, help="budget = this x --epochs trial-epochs")
    p.add_argument("--asha-trials", type=int, default=12, help="TPE + ASHA samples (ASHA spends ~half per trial)")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--analyse-only", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    space = args.out / "space.yaml"
    space.write_text(SPACE.format(max_concurrent=args.max_concurrent, image_size=args.image_size,
                                  epochs=args.epochs))
    budget = args.random_trials * args.epochs
    if not args.analyse_only:
        for seed in args.seeds:
            run_search(args, "random", seed, space, args.random_trials)
            run_search(args, "tpe_asha", seed, space, args.asha_trials)

    runs = [r for seed in args.seeds for m in METHODS if (r := analyse(args.out, m, seed))]
    per_seed = []
    for seed in args.seeds:
        by = {r.method: r for r in runs if r.seed == seed}
        if len(by) < 2:
            continue
        rnd, tpe = by["random"], by["tpe_asha"]
        target = rnd.best[min(budget, len(rnd.best)) - 1]
        tpe_at_budget = tpe.best[min(budget, len(tpe.best)) - 1]
        reach = budget_to_reach(tpe, target)
        per_seed.append({
            "seed": seed, "budget": budget, "random_best_val": round(target, 4),
            "random_budget_to_own_best": budget_to_reach(rnd, target),
            "tpe_asha_best_val_within_budget": round(tpe_at_budget, 4),
            "tpe_asha_budget_to_reach_random_best": reach,
            "tpe_asha_fraction_of_budget": round(reach / budget, 3) if reach else None,
            "tpe_asha_budget_used": tpe.budget[-1] if tpe.budget else 0,
            "random_winner_test_macro_f1": round(rnd.winner_test_macro_f1, 4),
            "tpe_asha_winner_test_macro_f1": round(tpe.winner_test_macro_f1, 4),
            "tpe_asha_winner_reported_at_budget": tpe.winner_reported_at_budget,
            "random_seconds": rnd.seconds, "tpe_asha_seconds": tpe.seconds,
            "random_trials": rnd.trials, "tpe_asha_trials": tpe.trials,
        })
        print(json.dumps(per_seed[-1]), flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "settings": {k: str(v) for k, v in vars(args).items()},
              "budget_trial_epochs": budget, "per_seed": per_seed, "runs": [asdict(r) for r in runs]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot and runs:
        plot(runs, max([budget] + [r.budget[-1] for r in runs if r.budget]), args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
