"""Search efficiency: Optuna TPE + ASHA vs random search without early stopping, same budget in trial-epochs.

    python bench/search_efficiency.py --data DIR --out /tmp/se --seeds 0 1 2 --json bench/results/search_efficiency.json \
        --plot bench/results/search_efficiency.png

Both methods are configured as `tune_ct.search` configures them: TPE + ASHA = OptunaSearch(TPESampler(seed)) +
ASHAScheduler(time_attr="epoch", grace_period=1, reduction_factor=2); random = Tune's BasicVariantGenerator with
no scheduler (`--searcher random --scheduler none`). The seed picks the data subset (`--limit-per-class`, as the
CLI does) and the samplers; both methods of one seed see the same train/val/test files.

--mode inproc (default): one Ray Tune run per (method, seed) in this process, over a function trainable that runs
  the trial's own step (`tune_ct.trial.train_epoch`, val macro-F1 from `tune_ct.metrics`) with reused actors but no
  Ray Train worker group per trial. The algorithms and the budget accounting are the same as the CLI's; what it
  leaves out is the per-trial process start-up, which on a 2-core machine under load made the CLI mode take hours.
--mode cli: each (method, seed) is a `python -m tune_ct.search` subprocess (`--analyse-only` re-reads them).

Budget spent = epochs reported so far by all trials (one report = one trial-epoch), in report order. Random gets
--random-trials full trials; TPE + ASHA gets --asha-trials samples and is cut at the same budget. The winner of
each search (best val macro-F1 within the budget) is evaluated once on the locked test subset.
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


def inproc_trainable(config: dict, settings: dict) -> None:
    """A Tune function trainable: the trial's training step and val metric, one report per epoch."""
    import ray.tune
    import torch

    from tune_ct.augment import Augment
    from tune_ct.cache import open_or_build
    from tune_ct.metrics import classification_metrics
    from tune_ct.models import build_model
    from tune_ct.trial import class_weights, predict, train_epoch

    torch.set_num_threads(1)
    size, epochs, seed = int(config["image_size"]), int(config["epochs"]), settings["seed"]
    data = open_or_build(Path(settings["subset"]), size, Path(settings["cache"]))
    train_idx, val_idx = data.indices("train"), data.indices("val")
    torch.manual_seed(seed)
    model = build_model(config["backbone"], size).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config["lr"]), weight_decay=float(config["weight_decay"]))
    batch_size = int(config["batch_size"])
    total = epochs * max(1, len(train_idx) // batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + np.cos(np.pi * min(1.0, s / total))))
    weight, labels = class_weights(data.labels[train_idx]), torch.from_numpy(data.labels)
    aug, gen, device = Augment.from_config(config), torch.Generator().manual_seed(seed), torch.device("cpu")
    trial_id = ray.tune.get_context().get_trial_id()
    for epoch in range(epochs):
        order = np.random.default_rng(seed * 1000 + epoch).permutation(train_idx)
        train_epoch(model, optimizer, scheduler, data.pixels, labels, order, batch_size, aug, gen, device, None, weight)
        probs = predict(model, data.pixels, val_idx, 64, device, None)
        f1 = classification_metrics(data.labels[val_idx], probs.argmax(1), prefix="val_")["val_macro_f1"]
        ckpt = Path(settings["ckpt_dir"]) / f"{trial_id}-e{epoch + 1}.pt"
        torch.save(model.state_dict(), ckpt)
        ray.tune.report({"epoch": epoch + 1, "val_macro_f1": float(f1), "ckpt": str(ckpt), "wall": time.time()})


def run_inproc(args, method: str, seed: int, space_path: Path, prep, budget: int) -> SearchRun:
    import optuna
    import torch
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from tune_ct.evaluate import evaluate_model, write_test_subset
    from tune_ct.models import build_model
    from tune_ct.space import load_space

    space = load_space(space_path)
    name = f"{method}-s{seed}"
    ckpt_dir = args.out / "ckpt" / name
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    settings = {"seed": seed, "subset": str(prep.trainval_path), "cache": str(args.out / "wd" / "cache"),
                "ckpt_dir": str(ckpt_dir)}
    tpe = method == "tpe_asha"
    started = time.monotonic()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(inproc_trainable, settings=settings), {"cpu": 1}),
        param_space=space.tune_space(),
        tune_config=tune.TuneConfig(
            metric="val_macro_f1", mode="max", max_concurrent_trials=args.max_concurrent,
            num_samples=args.asha_trials if tpe else args.random_trials,
            search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed)) if tpe
            else BasicVariantGenerator(random_state=seed),
            scheduler=ASHAScheduler(time_attr="epoch", max_t=args.epochs, grace_period=1, reduction_factor=2)
            if tpe else None,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(args.out / "ray_results"), verbose=0),
    )
    results = tuner.fit()
    rows = []
    for result in results:
        df = result.metrics_dataframe
        if df is not None and "val_macro_f1" in df:
            rows += df[["trial_id", "epoch", "val_macro_f1", "ckpt", "wall"]].dropna().to_dict("records")
    rows = sorted(rows, key=lambda r: r["wall"])
    used = len(rows)
    rows = rows[:budget]  # the same budget for both methods
    best, curve, win = -1.0, [], None
    for i, r in enumerate(rows, 1):
        if r["val_macro_f1"] > best:
            best, win = r["val_macro_f1"], (i, r)
        curve.append(best)
    at, winner = win
    model = build_model("baseline_cnn", args.image_size)  # the generated space fixes the backbone
    model.load_state_dict(torch.load(winner["ckpt"], map_location="cpu", weights_only=True))
    test_subset = write_test_subset(prep.manifest, prep.root, args.out / "wd", args.limit_per_class, seed)
    test = evaluate_model(model.eval(), args.image_size, test_subset, args.out / "wd" / "cache").headline()
    run = SearchRun(method, seed, list(range(1, len(rows) + 1)), curve, len(results), float(best),
                    float(test["macro_f1"]), at, round(time.monotonic() - started, 1))
    (args.out / f"inproc-{name}.json").write_text(json.dumps({**asdict(run), "budget_used_total": used}))
    print(f"{name}: {len(results)} trials, {used} trial-epochs, best val {best:.3f}, test {test['macro_f1']:.3f}, "
          f"{run.seconds:.0f}s", flush=True)
    return run


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


def inproc_runs(args, space: Path, budget: int) -> list[SearchRun]:
    import ray

    from tune_ct.cache import open_or_build
    from tune_ct.data import prepare

    runs = []
    ray.init(num_cpus=args.max_concurrent, include_dashboard=False, log_to_driver=False)
    try:
        for seed in args.seeds:
            done = {m: args.out / f"inproc-{m}-s{seed}.json" for m in METHODS}
            if all(f.exists() for f in done.values()):
                runs += [SearchRun(**{k: v for k, v in json.loads(f.read_text()).items() if k != "budget_used_total"})
                         for f in done.values()]
                continue
            # The seed picks the data subset, as `tune_ct.search --seed` does; build its cache before the trials.
            prep = prepare(args.data, args.out / "wd", seed=seed, limit_per_class=args.limit_per_class,
                           log=lambda *a: None)
            open_or_build(prep.trainval_path, args.image_size, args.out / "wd" / "cache")
            for method in METHODS:
                runs.append(run_inproc(args, method, seed, space, prep, budget))
    finally:
        ray.shutdown()
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, required=True, help="working folder (runs, logs, MLflow, Ray storage)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--limit-per-class", type=int, default=200)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--random-trials", type=int, default=6, help="budget = this x --epochs trial-epochs")
    p.add_argument("--asha-trials", type=int, default=16,
                   help="TPE + ASHA samples; its reports are cut at the random search's budget")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--mode", choices=["inproc", "cli"], default="inproc")
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
    if args.mode == "cli":
        if not args.analyse_only:
            for seed in args.seeds:
                run_search(args, "random", seed, space, args.random_trials)
                run_search(args, "tpe_asha", seed, space, args.asha_trials)
        runs = [r for seed in args.seeds for m in METHODS if (r := analyse(args.out, m, seed))]
    else:
        runs = inproc_runs(args, space, budget)
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
