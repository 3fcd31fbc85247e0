"""Trial overhead: the share of a trial's wall time spent outside the training loop, inside Ray Tune + Ray Train.

    python bench/overhead.py --data DIR --out /tmp/oh --json bench/results/overhead.json

Runs the same small search (`python -m tune_ct.search`, random sampler, no early stopping, one trial at a time)
once per variant, variants interleaved when --repeats > 1:
  before   the tune_ct package extracted from --before-commit (`git archive`), put first on PYTHONPATH (Ray's
           workers inherit it), with Ray Train's defaults set explicitly (controller polls every 2 s, a
           preemption-watcher actor per trial)
  after    the working tree's tune_ct with what tune_ct.train.trial sets (TRAIN_ENV_DEFAULTS) and its lazy imports
Per trial: wall = its MLflow child run's start to end (opened and closed by Tune callbacks on the driver);
in-loop = the per-epoch `time_data_s + time_compute_s + time_val_s` the trial reports; the rest is split into
checkpoint (`time_checkpoint_s`), cache open (`time_cache_s`) and other (trial + worker-group start, reporting,
teardown).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SPACE = """description: bench/overhead.py (generated)
search:
  metric: val_macro_f1
  num_samples: {trials}
  max_concurrent: 1
  grace_period: 1
  reduction_factor: 2
  workers_per_trial: 1
  cpus_per_worker: 1
params:
  backbone: baseline_cnn
  image_size: {image_size}
  lr: {{loguniform: [3.0e-4, 3.0e-3]}}
  weight_decay: 1.0e-4
  batch_size: 32
  epochs: {epochs}
  aug_rotation_deg: 5.0
  aug_crop_scale_min: 0.85
"""

RAY_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}
VARIANTS = ("before", "after")


def before_source(out: Path, commit: str) -> Path:
    """The tune_ct package as of `commit`, extracted (not checked out: the working tree is shared)."""
    folder = out / f"src-{commit}"
    if not (folder / "tune_ct").exists():
        folder.mkdir(parents=True, exist_ok=True)
        repo = Path(__file__).resolve().parents[1]
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "tune_ct"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def trial_module(source: Path) -> str:
    """The module every trial process imports (trial actor, Train controller, workers) in the tune_ct under
    `source`: tune_ct.train.trial since the package is laid out by stage, tune_ct.trial in the older flat layout
    (the default --before-commit)."""
    return "tune_ct.train.trial" if (source / "tune_ct" / "train" / "trial.py").exists() else "tune_ct.trial"


def trial_rows(out: Path, name: str) -> list[dict]:
    from mlflow.tracking import MlflowClient

    from tune_ct.track.tracker import TRIAL_ID_TAG  # the same tag name in the 'before' commits

    summary = json.loads((out / f"summary-{name}.json").read_text())
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    rows = []
    for run_id in summary["child_run_ids"]:
        info = client.get_run(run_id).info
        wall = (info.end_time - info.start_time) / 1000.0
        trial_id = client.get_run(run_id).data.tags.get(TRIAL_ID_TAG)
        results = [json.loads(line) for p in (out / "ray_results" / name).glob(f"*{trial_id}*/result.json")
                   for line in p.read_text().splitlines() if line.strip()]
        total = {k: sum(r.get(f"time_{k}_s", 0.0) or 0.0 for r in results)
                 for k in ("data", "compute", "val", "checkpoint", "cache")}
        loop = total["data"] + total["compute"] + total["val"]
        other = wall - loop - total["checkpoint"] - total["cache"]
        results.sort(key=lambda r: r["epoch"])
        # time_total_s counts from the trial actor's start: before the first report it is all start-up (trial
        # actor, Train controller, worker group, imports) plus epoch 1; after the last one, teardown + closing.
        first, last = results[0], results[-1]
        first_work = sum(first.get(f"time_{k}_s", 0.0) or 0.0 for k in ("data", "compute", "val", "checkpoint", "cache"))
        startup = first["time_total_s"] - first_work
        teardown = wall - last["time_total_s"]
        rows.append({"trial": trial_id, "epochs": len(results), "wall_s": round(wall, 2), "in_loop_s": round(loop, 2),
                     "checkpoint_s": round(total["checkpoint"], 2), "cache_s": round(total["cache"], 2),
                     "other_s": round(other, 2), "startup_s": round(startup, 2), "teardown_s": round(teardown, 2),
                     "between_epochs_s": round(other - startup - teardown, 2), "overhead_share": round(1 - loop / wall, 3),
                     "train_images_per_s": round(statistics.median(r["train_images_per_s"] for r in results), 1)})
    return rows


def run(args, variant: str, repeat: int, space: Path) -> list[dict]:
    name = f"{variant}-r{repeat}"
    if not (args.out / f"summary-{name}.json").exists():
        env = {k: v for k, v in os.environ.items() if k not in RAY_DEFAULTS}
        if variant == "before":
            env.update(RAY_DEFAULTS, PYTHONPATH=str(before_source(args.out, args.before_commit)))
        cmd = [sys.executable, "-m", "tune_ct.search", "--data", args.data, "--space", str(space),
               "--limit-per-class", str(args.limit_per_class), "--seed", "0", "--searcher", "random",
               "--scheduler", "none", "--workdir", str(args.out / "wd"), "--storage", str(args.out / "ray_results"),
               "--name", name, "--tracking-uri", f"sqlite:///{args.out / 'mlflow.db'}", "--experiment", "overhead",
               "--summary", str(args.out / f"summary-{name}.json")]
        t = time.monotonic()
        with open(args.out / f"{name}.log", "w") as log:
            code = subprocess.call(cmd, cwd=args.out, stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f"{name}: exit {code} in {time.monotonic() - t:.0f}s", flush=True)
        if code:
            raise SystemExit(f"{name} failed; see {args.out / (name + '.log')}")
    rows = trial_rows(args.out, name)
    for r in rows:
        r.update(variant=variant, repeat=repeat)
        print(json.dumps(r), flush=True)
    return rows


def import_seconds(args, rounds: int) -> dict:
    """Importing the trial module (`tune_ct.trial` in the flat layout, `tune_ct.train.trial` since) in a fresh
    interpreter, before vs after, interleaved: every trial pays it in the trial actor, the Train controller and
    each worker."""
    times = {"before": [], "after": []}
    sources = {"before": before_source(args.out, args.before_commit), "after": Path(__file__).resolve().parents[1]}
    modules = {v: trial_module(src) for v, src in sources.items()}
    for _ in range(rounds):
        for variant in times:
            env = dict(os.environ)
            if variant == "before":
                env["PYTHONPATH"] = str(sources["before"])
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {modules[variant]}"], check=True, env=env, cwd=args.out)
            times[variant].append(time.perf_counter() - t)
    return {v: {"module": modules[v], "median_s": round(statistics.median(t), 2),
                "all_s": [round(x, 2) for x in t]} for v, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--limit-per-class", type=int, default=300)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--before-commit", default="0c72c4c", help="the 'before' code (the last commit before the changes)")
    p.add_argument("--imports", type=int, default=5, help="rounds of the interleaved import-time check (0: skip)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    space = args.out / "space.yaml"
    space.write_text(SPACE.format(trials=args.trials, image_size=args.image_size, epochs=args.epochs))
    rows = [r for rep in range(args.repeats) for v in args.variants for r in run(args, v, rep, space)]
    summary = {}
    for v in args.variants:
        mine = [r for r in rows if r["variant"] == v]
        if mine:
            wall = sum(r["wall_s"] for r in mine)
            summary[v] = {"trials": len(mine), "mean_wall_s": round(wall / len(mine), 1),
                          "overhead_share": round(1 - sum(r["in_loop_s"] for r in mine) / wall, 3),
                          "other_s_per_trial": round(statistics.mean(r["other_s"] for r in mine), 2),
                          **{f"{k}_per_trial": round(statistics.mean(r[k] for r in mine), 2)
                             for k in ("startup_s", "teardown_s", "between_epochs_s")},
                          "checkpoint_s_per_trial": round(statistics.mean(r["checkpoint_s"] for r in mine), 2),
                          "cache_s_per_trial": round(statistics.mean(r["cache_s"] for r in mine), 2)}
    if args.imports:
        summary["import_tune_ct_trial"] = import_seconds(args, args.imports)
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"),
                                         "settings": {k: str(v) for k, v in vars(args).items()},
                                         "summary": summary, "trials": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
