"""Search efficiency: four ways to search one space on the same budget in trial-epochs, seed by seed.

    python bench/search_efficiency.py --mode cli --data DIR --out /tmp/se --seeds 0 1 2 3 4 --limit-per-class 0 \
        --json bench/results/search_efficiency_arms.json --plot bench/results/search_efficiency_arms.png

Arms (ARMS), each built by the CLI from a generated space (`--sampler`, `--scheduler`, the space's grace period
and `startup_trials`):
  random         Optuna RandomSampler(seed), no early stopping: --random-trials full trials = the budget;
  random_asha    RandomSampler + ASHA as the CPU spaces now stop trials (grace 2, reduction factor 2);
  tpe_asha_10    the search before issue 20: TPE with Optuna's fixed 10 random start-up trials + ASHA grace 1, rf 2;
  auto           the new default: `--sampler auto` under the CPU spaces' ASHA (grace 2, rf 2), which resolves to
                 TPE with a quarter of the samples as random start-up;
  auto_g1        `--sampler auto` under ASHA grace 1, rf 2, with 1.5x the samples (TPE, a quarter of them start-up);
  gp             `--sampler auto --scheduler none` (resolves to GPSampler): every trial runs to its end.
The early-stopping arms get --asha-trials samples; every arm is cut at the random search's budget. The seed picks
the data subset (`--limit-per-class`, as the CLI does), the samplers and training; all arms of one seed see the
same train/val/test files.

--mode cli (what BENCHMARKS.md reports): each (arm, seed) is a `python -m tune_ct.search` subprocess (trials in
  reused trial actors, study on SQLite, winner tested once on the locked split); `--analyse-only` re-reads them.
--mode inproc: one Ray Tune run per (arm, seed) in this process over a function trainable that runs the trial's
  own loop (`tune_ct.train.loop.fit`) without the CLI's start-up, for loaded machines.

Budget spent = epochs reported so far by all trials (one report = one trial-epoch), in report order. The winner
of each CLI search is the search's own (tested on the locked split); where it was reported after the budget, its
`winner_reported_at_budget` says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from machine import cpu_model  # bench/machine.py (the script's folder is on sys.path)
from tune_ct.train.settings import TrialSettings  # plain data: no torch or Ray at import



@dataclass(frozen=True)
class Arm:
    sampler: str  # --sampler
    scheduler: str  # --scheduler
    grace: int = 2  # the space's ASHA grace period (reduction factor 2 throughout)
    startup: str = "auto"  # the space's startup_trials
    early_stopping: bool = True  # gets --asha-trials samples (else --random-trials)
    samples: float = 1.0  # x --asha-trials: grace 1 spends ~2 trial-epochs a trial where grace 2 spends ~3
    warm: bool = False  # --warm-start from the previous seed's `auto` search (a second search on the same data)


ARMS = {"random": Arm("random", "none", early_stopping=False),
        "auto": Arm("auto", "asha"),
        "random_asha": Arm("random", "asha"),
        "tpe_asha_10": Arm("tpe", "asha", grace=1, startup="10", samples=1.5),
        "auto_g1": Arm("auto", "asha", grace=1, samples=1.5),
        "gp": Arm("auto", "none", early_stopping=False),
        "warm": Arm("auto", "asha", warm=True)}

SPACE = """description: bench/search_efficiency.py (generated)
search:
  metric: val_macro_f1
  num_samples: 6
  max_concurrent: {max_concurrent}
  grace_period: {grace}
  reduction_factor: 2
  startup_trials: {startup}
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
    trial_number: list[int] = field(default_factory=list)  # after each report: trials started so far (1-based)


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
    best, curve, at, order = -1.0, [], None, {}
    for i, r in enumerate(rows, 1):
        best = max(best, r["f1"])
        curve.append(best)
        order.setdefault(r["trial"], len(order) + 1)
        if r["trial"] == summary["best_trial_id"] and r["epoch"] == summary["best_epoch"]:
            at = i
    return SearchRun(method, seed, list(range(1, len(rows) + 1)), curve, summary["trials"],
                     float(summary["val_metrics"]["val_macro_f1"]), float(summary["test_metrics"]["macro_f1"]),
                     at or len(rows), float(summary["seconds"]), [order[r["trial"]] for r in rows])


def previous_runs(path: Path, arms: set[str], seeds: set[int]) -> list[SearchRun]:
    """Runs of an earlier result file (same data, seeds and budget) for the arms not run again."""
    rows = json.loads(path.read_text())["runs"]
    return [SearchRun(**r) for r in rows if r["method"] not in arms and r["seed"] in seeds]


def trials_to_reach(run: SearchRun, target: float) -> int | None:
    """How many of the search's own trials had started when a report first reached `target`."""
    for n, v in zip(run.trial_number, run.best):
        if v >= target - 1e-12:
            return n
    return None


def warm_comparison(args, seed: int, runs: list[SearchRun]) -> dict | None:
    """A second search on the same data, warm-started from a first one, against a cold start of the same budget
    and seed: how many new trials each needs to reach the first search's best val macro-F1."""
    by = {(r.method, r.seed): r for r in runs}
    first_seed = int(warm_source(args, seed).split("-s")[1])
    first, cold, warm = by.get(("auto", first_seed)), by.get(("auto", seed)), by.get(("warm", seed))
    if not (first and cold and warm):
        return None
    target = first.best[-1]
    return {"seed": seed, "first_search": f"auto-s{first_seed}", "first_best_val": round(target, 4),
            "cold_trials_to_reach": trials_to_reach(cold, target), "warm_trials_to_reach": trials_to_reach(warm, target),
            "cold_trials": cold.trials, "warm_trials": warm.trials, "cold_best_val": round(cold.best[-1], 4),
            "warm_best_val": round(warm.best[-1], 4), "cold_winner_test_macro_f1": round(cold.winner_test_macro_f1, 4),
            "warm_winner_test_macro_f1": round(warm.winner_test_macro_f1, 4)}


def budget_to_reach(run: SearchRun, target: float) -> int | None:
    for b, v in zip(run.budget, run.best):
        if v >= target - 1e-12:
            return b
    return None


def arm_space(args, method: str) -> Path:
    arm = ARMS[method]
    path = args.out / f"space-{method}.yaml"
    path.write_text(SPACE.format(max_concurrent=args.max_concurrent, image_size=args.image_size, epochs=args.epochs,
                                 grace=arm.grace, startup=arm.startup))
    return path


def arm_samples(args, method: str) -> int:
    arm = ARMS[method]
    return round(args.asha_trials * arm.samples) if arm.early_stopping else args.random_trials


def warm_source(args, seed: int) -> str:
    """The first search a warm arm builds on: the previous seed's `auto` search (cyclic)."""
    return f"auto-s{args.seeds[args.seeds.index(seed) - 1]}"


def run_search(args, method: str, seed: int) -> None:
    name = f"{method}-s{seed}"
    arm, space, num_samples = ARMS[method], arm_space(args, method), arm_samples(args, method)
    if (args.out / f"summary-{name}.json").exists():
        print(f"{name}: done already", flush=True)
        return
    limit = ["--limit-per-class", str(args.limit_per_class)] if args.limit_per_class else []  # 0: the full set
    cmd = [sys.executable, "-m", "tune_ct.search", "--data", str(args.data), "--space", str(space), *limit,
           "--seed", str(seed), "--num-samples", str(num_samples),
           "--workdir", str(args.out / "wd"), "--storage", str(args.out / "ray_results"), "--name", name,
           "--tracking-uri", f"sqlite:///{args.out / 'mlflow.db'}", "--experiment", "search_efficiency",
           "--summary", str(args.out / f"summary-{name}.json"), "--sampler", arm.sampler, "--scheduler", arm.scheduler,
           *(["--warm-start", warm_source(args, seed)] if arm.warm else [])]
    started = time.monotonic()
    with open(args.out / f"{name}.log", "w") as log:
        code = subprocess.call(cmd, cwd=args.out, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    print(f"{name}: exit {code} in {time.monotonic() - started:.0f}s", flush=True)
    if code:
        raise SystemExit(f"{name} failed; see {args.out / (name + '.log')}")


def report_to_tune(metrics: dict, training, epoch: int) -> float:
    """The loop's report for a plain Tune function trainable, as tune_ct.train.trial.report_epoch does it for Ray
    Train: the epoch's checkpoint (tune_ct's format) saved beside the metrics and handed to Tune, which keeps it
    under the run's storage. Returns the seconds the report took."""
    import ray.tune

    from tune_ct.train.loop import save_epoch

    with tempfile.TemporaryDirectory() as tmp:
        metrics["time_checkpoint_s"] = save_epoch(Path(tmp), training, epoch, metrics)
        metrics["wall"] = time.time()  # report order across trials (Tune's timestamp is whole seconds)
        t = time.perf_counter()
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))
        return time.perf_counter() - t


def inproc_trainable(config: dict, settings: TrialSettings) -> None:
    """A Tune function trainable: the trial's own training loop (tune_ct.train.loop.fit), one report per epoch,
    on this actor's CPU instead of a Ray Train worker group. Never resumed (Tune's retries start afresh)."""
    import torch

    from tune_ct.train.loop import LoopContext, fit

    device = torch.device("cpu")
    ctx = LoopContext(rank=0, world_size=1, device=device, prepare_model=lambda model: model.to(device),
                      report=report_to_tune, restore=lambda: None)
    fit(config, settings, ctx)


def tune_search(args, method: str, seed: int, space, settings: TrialSettings):
    """One Ray Tune run of `method` over the in-process trainable: the CLI's sampler, searcher and scheduler."""
    from ray import tune

    from tune_ct.train.tuner import build_scheduler, build_searcher, resolve_sampler

    arm, scheduler, num_samples = ARMS[method], ARMS[method].scheduler, arm_samples(args, method)
    # Resolved as the CLI resolves --sampler (tune_ct.search.plan): one objective, this budget, this scheduler.
    sampler = resolve_sampler(arm.sampler, scheduler, num_samples, False, space.search.startup_trials)
    param_space = space.tune_space()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(inproc_trainable, settings=settings), {"cpu": 1}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, max_concurrent_trials=args.max_concurrent,
            num_samples=num_samples,
            # Built as the CLI builds them (tune_ct.train.tuner), from the same generated space.
            search_alg=build_searcher(sampler, seed, param_space, args.max_concurrent,
                                      study_name=settings.experiment),
            scheduler=build_scheduler(scheduler, space.max_epochs, space.search.grace_period,
                                      space.search.reduction_factor),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=settings.experiment, storage_path=settings.storage_path, verbose=0),
    )
    return tuner.fit()


def report_rows(results) -> list[dict]:
    """Every epoch report of every trial with its checkpoint folder, in report order."""
    rows = []
    for result in results:
        df = result.metrics_dataframe
        if df is not None and "val_macro_f1" in df:
            # Every report came with its checkpoint; Tune keeps them all (no num_to_keep).
            ckpt = {int(m["epoch"]): c.path for c, m in (result.best_checkpoints or [])}
            for r in df[["trial_id", "epoch", "val_macro_f1", "wall"]].dropna().to_dict("records"):
                rows.append({**r, "ckpt": ckpt.get(int(r["epoch"]))})
    return sorted(rows, key=lambda r: r["wall"])


def run_inproc(args, method: str, seed: int, prep, budget: int, data) -> SearchRun:
    """`data`: the seed's DataSettings, which `prep` was prepared with (its locked test split tests the winner)."""
    from tune_ct.evaluate.evaluation import evaluate_on, locked_split_of
    from tune_ct.model.checkpoint import load_checkpoint_model
    from tune_ct.train.space import load_space

    space = load_space(arm_space(args, method))
    name = f"{method}-s{seed}"
    # What the CLI's trials share, with the CLI's seed rule (--seed picks the subset, the samplers and training).
    settings = TrialSettings(subset_path=str(prep.trainval_path), cache_root=str(data.work.cache),
                             storage_path=str(args.out / "ray_results"), experiment=name, seed=seed,
                             cpus_per_worker=1.0, metric=space.metric, mode=space.mode)
    started = time.monotonic()
    results = tune_search(args, method, seed, space, settings)
    rows = report_rows(results)
    used = len(rows)
    rows = rows[:budget]  # the same budget for both methods
    best, curve, win = -1.0, [], None
    for i, r in enumerate(rows, 1):
        if r["val_macro_f1"] > best:
            best, win = r["val_macro_f1"], (i, r)
        curve.append(best)
    at, winner = win
    if winner["ckpt"] is None:
        raise SystemExit(f"{name}: no checkpoint for the winner {winner['trial_id']} epoch {winner['epoch']}")
    # Tested as the CLI tests its winner: the checkpoint's own network, image size and film preprocessing.
    model, meta = load_checkpoint_model(winner["ckpt"])
    test = evaluate_on(model, meta, locked_split_of(prep, data)).headline()
    run = SearchRun(method, seed, list(range(1, len(rows) + 1)), curve, len(results), float(best),
                    float(test["macro_f1"]), at, round(time.monotonic() - started, 1))
    (args.out / f"inproc-{name}.json").write_text(json.dumps({**asdict(run), "budget_used_total": used}))
    print(f"{name}: {len(results)} trials, {used} trial-epochs, best val {best:.3f}, test {test['macro_f1']:.3f}, "
          f"{run.seconds:.0f}s", flush=True)
    return run


def plot(runs: list[SearchRun], budget: int, path: Path) -> None:
    from tune_ct.track.figures import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(5.5, 3.6), dpi=90)
    colors = {"random": "tab:gray", "random_asha": "tab:olive", "tpe_asha_10": "tab:orange", "auto": "tab:blue",
              "gp": "tab:purple", "auto_g1": "tab:green"}
    grid = np.arange(1, budget + 1)
    for method, color in colors.items():
        curves = []
        for r in (r for r in runs if r.method == method):
            y = np.array([r.best[min(b, len(r.best)) - 1] for b in grid])
            curves.append(y)
            ax.step(grid, y, where="post", color=color, alpha=0.3, lw=1)
        if curves:
            ax.step(grid, np.mean(curves, 0), where="post", color=color, lw=2.2,
                    label=f"{method} (mean of {len(curves)} seeds)")
    ax.set_xlabel("budget spent (trial-epochs)")
    ax.set_ylabel("best val macro-F1 so far")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def inproc_runs(args, budget: int) -> list[SearchRun]:
    import ray

    from tune_ct.data.cache import open_or_build
    from tune_ct.data.prepare import DataSettings, prepare
    from tune_ct.data.workdir import WorkFolder

    runs = []
    ray.init(num_cpus=args.max_concurrent, include_dashboard=False, log_to_driver=False)
    try:
        for seed in args.seeds:
            arms = [m for m in args.arms if not ARMS[m].warm]  # --warm-start is the CLI's
            done = {m: args.out / f"inproc-{m}-s{seed}.json" for m in arms}
            if all(f.exists() for f in done.values()):
                runs += [SearchRun(**{k: v for k, v in json.loads(f.read_text()).items() if k != "budget_used_total"})
                         for f in done.values()]
                continue
            # The seed picks the data subset, as `tune_ct.search --seed` does; build its cache before the trials.
            data = DataSettings(data=args.data, work=WorkFolder(args.out / "wd"), seed=seed,
                                limit_per_class=args.limit_per_class)
            prep = prepare(data)
            open_or_build(prep.trainval_path, args.image_size, data.work.cache)
            for method in arms:
                runs.append(run_inproc(args, method, seed, prep, budget, data))
    finally:
        ray.shutdown()
    return runs


def seed_comparison(seed: int, budget: int, rnd: SearchRun, other: SearchRun) -> dict:
    """One arm against random search on one seed: the budget it needs to match random's best within the budget."""
    target = rnd.best[min(budget, len(rnd.best)) - 1]
    reach = budget_to_reach(other, target)
    return {
        "seed": seed, "arm": other.method, "budget": budget, "random_best_val": round(target, 4),
        "random_budget_to_own_best": budget_to_reach(rnd, target),
        "best_val_within_budget": round(other.best[min(budget, len(other.best)) - 1], 4),
        "budget_to_reach_random_best": reach,
        "fraction_of_budget": round(reach / budget, 3) if reach else None,
        "budget_used": other.budget[-1] if other.budget else 0,
        "random_winner_test_macro_f1": round(rnd.winner_test_macro_f1, 4),
        "winner_test_macro_f1": round(other.winner_test_macro_f1, 4),
        "winner_reported_at_budget": other.winner_reported_at_budget,
        "seconds": other.seconds, "trials": other.trials,
    }


def run_cli_searches(args) -> None:
    """Seed by seed, the issue's arms first; gp (an extra arm) after every seed's, so a short session can drop it."""
    core = [m for m in args.arms if not ARMS[m].warm and m != "gp"]
    for seed in args.seeds:
        for method in core:
            run_search(args, method, seed)
        if "warm" in args.arms and seed != args.seeds[0]:  # its source, the previous seed's auto, is done
            run_search(args, "warm", seed)
    if "warm" in args.arms:
        run_search(args, "warm", args.seeds[0])
    for seed in args.seeds if "gp" in args.arms else []:
        run_search(args, "gp", seed)


T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of a - b over seeds, with a t interval (95%)."""
    d = np.array(a) - np.array(b)
    half = T95.get(len(d) - 1, 2.0) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": round(float(d.mean()), 4), "ci95": [round(float(d.mean() - half), 4), round(float(d.mean() + half), 4)]}


def arm_summary(per_seed: list[dict], runs: list[SearchRun], budget: int) -> dict:
    """Per arm, over seeds: how often it reached random's best within half the budget, its best val within the
    budget and its winners' locked-test macro-F1, each paired by seed with random and with random_asha."""
    best = {(r.method, r.seed): r.best[min(budget, len(r.best)) - 1] for r in runs}
    test = {(r.method, r.seed): r.winner_test_macro_f1 for r in runs}
    out = {}
    for arm in sorted({row["arm"] for row in per_seed}):
        rows = [row for row in per_seed if row["arm"] == arm]
        seeds = [row["seed"] for row in rows]
        out[arm] = {"seeds": seeds,
                    "reached_random_best_within_half": sum(1 for row in rows if row["fraction_of_budget"] is not None
                                                           and row["fraction_of_budget"] <= 0.5),
                    "mean_best_val_within_budget": round(float(np.mean([best[(arm, s)] for s in seeds])), 4),
                    "mean_winner_test_macro_f1": round(float(np.mean([test[(arm, s)] for s in seeds])), 4),
                    "best_val_minus_random": paired([best[(arm, s)] for s in seeds], [best[("random", s)] for s in seeds]),
                    "test_minus_random": paired([test[(arm, s)] for s in seeds], [test[("random", s)] for s in seeds])}
        both = [s for s in seeds if ("random_asha", s) in best]
        if arm != "random_asha" and both:
            out[arm]["best_val_minus_random_asha"] = paired([best[(arm, s)] for s in both],
                                                            [best[("random_asha", s)] for s in both])
    out["random"] = {"mean_best_val_within_budget": round(float(np.mean(
        [best[("random", s)] for s in {row["seed"] for row in per_seed}])), 4), "mean_winner_test_macro_f1": round(
        float(np.mean([test[("random", s)] for s in {row["seed"] for row in per_seed}])), 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="working folder (runs, logs, MLflow, Ray storage)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--limit-per-class", type=int, default=200, help="films per class per seed; 0: the full set")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--random-trials", type=int, default=6, help="budget = this x --epochs trial-epochs")
    p.add_argument("--asha-trials", type=int, default=16,
                   help="TPE + ASHA samples; its reports are cut at the random search's budget")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--mode", choices=["inproc", "cli"], default="inproc")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--analyse-only", action="store_true")
    p.add_argument("--previous", type=Path, help="an earlier --json: its runs of arms not in --arms join the comparison")
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    args.out, args.data = args.out.resolve(), args.data.resolve()  # each search runs in its own folder
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.random_trials * args.epochs
    if args.mode == "cli":
        if not args.analyse_only:
            run_cli_searches(args)
        runs = [r for seed in args.seeds for m in args.arms if (r := analyse(args.out, m, seed))]
        runs += previous_runs(args.previous, set(args.arms), set(args.seeds)) if args.previous else []
    else:
        runs = inproc_runs(args, budget)
    per_seed = []
    for seed in args.seeds:
        by = {r.method: r for r in runs if r.seed == seed}
        for method in (m for m in by if m not in ("random", "warm") and "random" in by):
            per_seed.append(seed_comparison(seed, budget, by["random"], by[method]))
            print(json.dumps(per_seed[-1]), flush=True)
    warm = [w for seed in args.seeds if (w := warm_comparison(args, seed, runs))]
    for w in warm:
        print(json.dumps(w), flush=True)
    arms = arm_summary(per_seed, runs, budget) if per_seed else {}
    print(json.dumps(arms, indent=1), flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "settings": {k: str(v) for k, v in vars(args).items()},
              "budget_trial_epochs": budget, "arms": arms, "per_seed": per_seed, "warm_start": warm, "runs": [asdict(r) for r in runs]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot and runs:
        plot(runs, max([budget] + [r.budget[-1] for r in runs if r.budget]), args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
