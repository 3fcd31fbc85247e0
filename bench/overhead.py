"""Trial overhead: the share of a trial's wall time spent outside the training loop, inside Ray Tune + Ray Train.

    python bench/overhead.py --data DIR --out /tmp/oh --json bench/results/overhead.json
    python bench/overhead.py --mode runners --data DIR --out /tmp/ohr --json bench/results/overhead_runners.json

--mode versions (the default) runs the same small search (`python -m tune_ct.search`, random sampler, no early
stopping, one trial at a time) once per variant, variants interleaved when --repeats > 1:
  before   the tune_ct package extracted from --before-commit (`git archive`), put first on PYTHONPATH (Ray's
           workers inherit it), with Ray Train's defaults set explicitly (controller polls every 2 s, a
           preemption-watcher actor per trial)
  after    the working tree's tune_ct with what tune_ct.train.trial sets (TRAIN_ENV_DEFAULTS) and its lazy imports
Per trial: wall = its MLflow child run's start to end (opened and closed by Tune callbacks on the driver);
in-loop = the per-epoch `time_data_s + time_compute_s + time_val_s` the trial reports; the rest is split into
checkpoint (`time_checkpoint_s`), cache open (`time_cache_s`) and other (trial + worker-group start, reporting,
teardown).

--mode runners compares the two trial runners (search.runner: actor | train) on one search (same space, seed,
random sampler, no early stopping), written as two space files that differ only in search.runner, at each
--concurrency (`--max-concurrent`), the runners' order alternating from one search to the next. The tune_ct that
runs is `git archive --code` (default HEAD) first on PYTHONPATH, so edits in the working tree during the runs do
not change what is measured (--code worktree: the working tree). One unmeasured 1-trial search first builds the
manifest and the image cache that every measured search then reuses. See `runner_rows` for how each trial's time
is split and `runner_summary` for the figures per runner.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

REPO = Path(__file__).resolve().parents[1]
RAY_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}
VARIANTS = ("before", "after")


def before_source(out: Path, commit: str) -> Path:
    """The tune_ct package as of `commit`, extracted (not checked out: the working tree is shared)."""
    folder = out / f"src-{commit}"
    if not (folder / "tune_ct").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "tune_ct"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def trial_module(source: Path) -> str:
    """The module every trial process imports (trial actor, Train controller, workers) in the tune_ct under
    `source`: tune_ct.train.trial since the package is laid out by stage, tune_ct.trial in the older flat layout
    (the default --before-commit)."""
    return "tune_ct.train.trial" if (source / "tune_ct" / "train" / "trial.py").exists() else "tune_ct.trial"


def random_sampler_args(source: Path | None) -> list[str]:
    """Random sampling in the tune_ct under `source` (None: the working tree): `--sampler random` (an Optuna study
    with RandomSampler) where its search CLI has --sampler, else `--searcher random` (Tune's random search: the
    code before --sampler, such as the default --before-commit)."""
    package = (source or REPO) / "tune_ct"
    has_sampler = any('"--sampler"' in f.read_text() for f in package.rglob("*.py"))
    return ["--sampler" if has_sampler else "--searcher", "random"]


def trial_rows(out: Path, name: str) -> list[dict]:
    from mlflow.tracking import MlflowClient

    from tune_ct.track import tags  # tags.TRIAL_ID: the same tag name in the 'before' commits

    summary = json.loads((out / f"summary-{name}.json").read_text())
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    rows = []
    for run_id in summary["child_run_ids"]:
        info = client.get_run(run_id).info
        wall = (info.end_time - info.start_time) / 1000.0
        trial_id = client.get_run(run_id).data.tags.get(tags.TRIAL_ID)
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
        source = before_source(args.out, args.before_commit) if variant == "before" else None
        if source is not None:
            env.update(RAY_DEFAULTS, PYTHONPATH=str(source))
        cmd = [sys.executable, "-m", "tune_ct.search", "--data", args.data, "--space", str(space),
               "--limit-per-class", str(args.limit_per_class), "--seed", "0", *random_sampler_args(source),
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
    sources = {"before": before_source(args.out, args.before_commit), "after": REPO}
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


# --- --mode runners: actor vs train ------------------------------------------------------------------------------

# The same search as SPACE, with the runner named (the two runner files differ only in search.runner).
RUNNER_SPACE = SPACE.replace("description: bench/overhead.py (generated)",
                             "description: bench/overhead.py --mode runners (generated)").replace(
    "  cpus_per_worker: 1\n", "  cpus_per_worker: 1\n  runner: {runner}\n")
RUNNERS = ("actor", "train")
SLOT_TOLERANCE_S = 0.5  # a trial "follows" a slot's previous trial when it starts after that one ended (+ this)


# Applied to the extracted code when it has the first string: 8408af6 calls Model.log without the artifact_path
# that the installed MLflow (3.17.2) requires positionally, so the search failed when it registered the winner,
# after every trial (the working tree carries the same one-line fix). It runs after the trials, for both runners.
COMPAT_PATCHES = {"tune_ct/registry/serving.py": ('Model.log(name="model",', 'Model.log(None, name="model",')}


def code_source(out: Path, code: str) -> tuple[Path | None, str, list[str]]:
    """(folder to put first on PYTHONPATH or None for the working tree, the commit or 'worktree', patches applied)."""
    if code == "worktree":
        return None, "worktree", []
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", code], check=True, capture_output=True,
                            text=True).stdout.strip()
    folder, patched = before_source(out, commit), []
    for rel, (old, new) in COMPAT_PATCHES.items():
        file = folder / rel
        text = file.read_text() if file.exists() else ""
        if old in text:
            file.write_text(text.replace(old, new))
            patched.append(f"{rel}: {old} -> {new}")
    return folder, commit, patched


def train_seconds(result: dict, batch_size: int) -> float:
    """The wall time of an epoch's train_epoch: the loop reports train_images_per_s = images seen / that wall, and
    with one worker it sees every whole batch of the train split (drop_last)."""
    n = int(result["n_train"])
    seen = (n // batch_size) * batch_size if n > batch_size else n
    return seen / max(float(result["train_images_per_s"]), 1e-9)


def runner_trial(client, run_id: str, results: Path) -> dict:
    """One trial of a --mode runners search, its times on the driver's clock (see `runner_rows`). `results`: the
    search's Tune folder."""
    from tune_ct.track import tags

    run = client.get_run(run_id)
    trial_id = run.data.tags.get(tags.TRIAL_ID)
    reports = [json.loads(line) for p in results.glob(f"*{trial_id}*/result.json")
               for line in p.read_text().splitlines() if line.strip()]
    reports.sort(key=lambda r: r["epoch"])
    arrival = {int(m.step): m.timestamp / 1000.0 for m in client.get_metric_history(run_id, "val_loss")}
    bs = int(reports[0]["config"]["batch_size"])
    work = [train_seconds(r, bs) + r["time_val_s"] + (r.get("time_checkpoint_s") or 0.0) for r in reports]
    loop = sum(train_seconds(r, bs) + r["time_val_s"] for r in reports)
    first, last = reports[0], reports[-1]
    t0, end = run.info.start_time / 1000.0, run.info.end_time / 1000.0
    t1 = arrival[int(first["epoch"])] - work[0]
    return {
        "trial": trial_id, "epochs": len(reports), "t0": t0, "t1": t1, "end": end,
        "wall_s": end - t0, "in_loop_s": loop,
        "data_compute_s": sum(r["time_data_s"] + r["time_compute_s"] + r["time_val_s"] for r in reports),
        "startup_s": t1 - t0, "startup_in_trial_s": first["time_total_s"] - work[0],
        "teardown_s": end - arrival[int(last["epoch"])],
        "between_epochs_s": (arrival[int(last["epoch"])] - arrival[int(first["epoch"])]) - sum(work[1:]),
        "checkpoint_s": sum(r.get("time_checkpoint_s") or 0.0 for r in reports),
        "cache_s": sum(r.get("time_cache_s") or 0.0 for r in reports),
        "first_timestamp_minus_arrival_s": first["timestamp"] - arrival[int(first["epoch"])],  # whole seconds
        "pid": first.get("pid"), "train_images_per_s": statistics.median(r["train_images_per_s"] for r in reports),
    }


def assign_slots(rows: list[dict], concurrency: int) -> int:
    """Give each trial its slot (slot, nth_in_slot, launch_s, slot_gap_s, slot_wall_s); returns the slot count.
    Slots: trials in order of T0; a trial whose process (Tune's `pid`) ran an earlier trial follows that one (the
    `actor` runner's reused actor); any other takes the slot whose previous trial ended last before T0 (+0.5 s),
    or a new slot while fewer than max_concurrent are open."""
    slots: list[float] = []  # the end of each slot's latest trial
    counts: list[int] = []  # trials so far in each slot
    slot_of_pid: dict = {}
    for r in sorted(rows, key=lambda r: r["t0"]):
        free = [i for i, e in enumerate(slots) if e <= r["t0"] + SLOT_TOLERANCE_S]
        if r["pid"] not in slot_of_pid and not free and len(slots) < concurrency:
            slots.append(r["end"])
            counts.append(1)
            slot_of_pid[r["pid"]] = len(slots) - 1
            r.update(slot=len(slots) - 1, nth_in_slot=0, launch_s=None, slot_gap_s=None, slot_wall_s=None)
            continue
        # the slot freed last before this trial started (every slot busy should not happen: the one ending first)
        i = slot_of_pid.get(r["pid"])
        if i is None:
            i = max(free, key=lambda i: slots[i]) if free else min(range(len(slots)), key=lambda i: slots[i])
        slot_of_pid[r["pid"]] = i
        previous, slots[i] = slots[i], r["end"]
        r.update(slot=i, nth_in_slot=counts[i], launch_s=r["t0"] - previous, slot_gap_s=r["t1"] - previous,
                 slot_wall_s=r["end"] - previous)
        counts[i] += 1
    return len(slots)


def runner_rows(out: Path, name: str, concurrency: int) -> tuple[list[dict], dict]:
    """Every trial of search `name`, its time split on the driver's clock, and the search's walls.

    Per trial (all times on the driver, one machine, so the trial actor's time.time() is the same clock):
      T0 = the MLflow child run's start_time: Tune's on_trial_start, fired once the trial's actor is up (a new one,
           or for `actor` a reused one after its reset) and just before Tune calls train() on it;
      arrival(k) = the timestamp of epoch k's metrics in MLflow: the driver's clock when Tune handed that result to
           the callbacks (TrialTracker.on_trial_result);
      work(k) = epoch k's train_epoch wall (train_seconds) + time_val_s + time_checkpoint_s, measured in the loop;
      T1 = arrival(1) - work(1): the first training step;
      end = the child run's end_time: on_trial_complete, once Tune has the trial's end.
    startup_s = T1 - T0 (an upper bound: it also holds the MLflow writes that open the child run, the dispatch of
    train(), and epoch 1's checkpoint persist + result hand-off); startup_in_trial_s = Tune's first time_total_s
    (counted inside the trial from its train() call to the first result) - work(1), a lower bound and the
    definition of --mode versions. launch_s = T0 - the end of the previous trial in the same slot (Tune stops or
    caches the actor, then starts or resets one: for `train` a new trial actor process, for `actor` a reset);
    slot_gap_s = launch_s + startup_s: the slot's time without training from one trial's end to the next one's
    first step. in_loop_s = sum over epochs of train_seconds + time_val_s (the training loop proper; data_compute_s
    is the narrower sum of the per-batch data + compute timers of --mode versions). teardown_s = end - arrival(last).
    wall_s = end - T0; slot_wall_s = end - the previous trial's end in the slot (launch included; None for the
    first trial of a slot, whose actor start precedes T0 and is seen only in the search's walls). Slots: see
    `assign_slots`."""
    from mlflow.tracking import MlflowClient

    summary = json.loads((out / f"summary-{name}.json").read_text())
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    rows = [runner_trial(client, run_id, out / "ray_results" / name) for run_id in summary["child_run_ids"]]
    slots = assign_slots(rows, concurrency)
    for r in rows:
        r["overhead_share"] = 1 - r["in_loop_s"] / r["wall_s"]
        r["slot_overhead_share"] = None if r["slot_wall_s"] is None else 1 - r["in_loop_s"] / r["slot_wall_s"]
    parent = client.get_run(summary["parent_run_id"]).info
    search = {"parent_run_s": (parent.end_time - parent.start_time) / 1000.0, "search_seconds": summary["seconds"],
              "trial_phase_s": max(r["end"] for r in rows) - min(r["t0"] for r in rows),
              "in_loop_s": sum(r["in_loop_s"] for r in rows), "slots": slots, "trials": len(rows)}
    return sorted(rows, key=lambda r: r["t0"]), search


def run_runner_search(args, runner: str, concurrency: int, repeat: int, spaces: dict, env: dict, code: str,
                      trials: int | None = None, epochs_space: Path | None = None) -> tuple[float, str, str]:
    """One `python -m tune_ct.search`; (the command's wall in seconds, its name, the code it ran). Skipped when
    already done (then the code is the one it ran with)."""
    name = f"{runner}-c{concurrency}-r{repeat}"
    timing = args.out / f"wall-{name}.json"
    if timing.exists() and (args.out / f"summary-{name}.json").exists():
        done = json.loads(timing.read_text())
        return done["command_s"], name, done.get("code", "?")
    source = Path(env["PYTHONPATH"]) if env.get("PYTHONPATH") else None  # the code that runs (None: working tree)
    cmd = [sys.executable, "-m", "tune_ct.search", "--data", args.data, "--space", str(epochs_space or spaces[runner]),
           "--limit-per-class", str(args.limit_per_class), "--seed", "0", *random_sampler_args(source),
           "--scheduler", "none", "--max-concurrent", str(concurrency), "--workdir", str(args.out / "wd"),
           "--storage", str(args.out / "ray_results"), "--name", name,
           "--tracking-uri", f"sqlite:///{args.out / 'mlflow.db'}", "--experiment", "overhead-runners",
           "--summary", str(args.out / f"summary-{name}.json")]
    if trials:
        cmd += ["--num-samples", str(trials)]
    shutil.rmtree(args.out / "ray_results" / name, ignore_errors=True)  # a failed earlier try of this search
    t = time.monotonic()
    with open(args.out / f"{name}.log", "w") as log:
        code = subprocess.call(cmd, cwd=args.out, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.monotonic() - t
    print(f"{name}: exit {code} in {seconds:.0f}s", flush=True)
    if code:
        raise SystemExit(f"{name} failed; see {args.out / (name + '.log')}")
    timing.write_text(json.dumps({"command_s": seconds, "cmd": cmd, "code": code}))
    return seconds, name, code


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def outside_share(searches: list[dict], wall_key: str) -> float:
    """1 - (seconds in training loops) / (slots x wall): the share of a search's slot-seconds spent outside every
    trial's loop, mean over the searches."""
    return round(statistics.mean(1 - s["in_loop_s"] / (s["slots"] * s[wall_key]) for s in searches), 3)


def runner_summary(searches: list[dict]) -> dict:
    """Per concurrency and runner, pooled over repeats: the medians over trials and the searches' walls."""
    out: dict = {}
    for c in sorted({s["concurrency"] for s in searches}):
        out[f"c{c}"] = block = {}
        for runner in RUNNERS:
            mine = [s for s in searches if s["concurrency"] == c and s["runner"] == runner]
            if not mine:
                continue
            trials = [t for s in mine for t in s["trials"]]
            later = [t for t in trials if t["nth_in_slot"] > 0]
            firsts = [t for t in trials if t["nth_in_slot"] == 0]
            block[runner] = {
                "searches": len(mine), "trials": len(trials),
                "startup_s_median_later": _median(t["startup_s"] for t in later),
                "startup_s_max_later": round(max(t["startup_s"] for t in later), 3) if later else None,
                "startup_in_trial_s_median_later": _median(t["startup_in_trial_s"] for t in later),
                "launch_s_median_later": _median(t["launch_s"] for t in later),
                "slot_gap_s_median_later": _median(t["slot_gap_s"] for t in later),
                "startup_s_first_in_slot": [round(t["startup_s"], 2) for t in firsts],
                "teardown_s_median": _median(t["teardown_s"] for t in trials),
                "between_epochs_s_median": _median(t["between_epochs_s"] for t in trials),
                "cache_s_median": _median(t["cache_s"] for t in trials),
                "in_loop_s_median": _median(t["in_loop_s"] for t in trials),
                "wall_s_median": _median(t["wall_s"] for t in trials),
                "overhead_share_median": _median(t["overhead_share"] for t in trials),
                "slot_overhead_share_median_later": _median(t["slot_overhead_share"] for t in later),
                "search_command_s": [round(s["command_s"], 1) for s in mine],
                "search_parent_run_s": [round(s["parent_run_s"], 1) for s in mine],
                "search_trial_phase_s": [round(s["trial_phase_s"], 1) for s in mine],
                "search_in_loop_s": [round(s["in_loop_s"], 1) for s in mine],
                # three walls: the command's own, the MLflow parent run's, first trial start to last trial end
                "outside_loops_share_command": outside_share(mine, "command_s"),
                "outside_loops_share_parent_run": outside_share(mine, "parent_run_s"),
                "outside_loops_share_trial_phase": outside_share(mine, "trial_phase_s"),
            }
        if len(block) == 2:
            a, t = block["actor"], block["train"]
            block["ratio_train_over_actor"] = {
                k: round(t[k] / a[k], 2) if isinstance(a[k], (int, float)) and a[k] else None
                for k in ("startup_s_median_later", "startup_in_trial_s_median_later", "launch_s_median_later",
                          "slot_gap_s_median_later", "teardown_s_median", "wall_s_median", "overhead_share_median",
                          "outside_loops_share_command", "outside_loops_share_parent_run",
                          "outside_loops_share_trial_phase")}
            block["ratio_train_over_actor"].update({
                k: round(statistics.mean(t[k]) / statistics.mean(a[k]), 2)
                for k in ("search_command_s", "search_parent_run_s", "search_trial_phase_s", "search_in_loop_s")})
        for runner, figures in block.items():
            if runner == "actor":
                figures["target_startup_le_1s"] = (figures["startup_s_median_later"] or 0) <= 1.0
                for wall in ("command", "parent_run", "trial_phase"):
                    figures[f"target_outside_loops_le_10pct_{wall}"] = figures[f"outside_loops_share_{wall}"] <= 0.10
    return out


def compare_runners(args) -> dict:
    source, commit, patched = code_source(args.out, args.code)
    env = {k: v for k, v in os.environ.items() if k not in RAY_DEFAULTS and k != "PYTHONPATH"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    spaces = {}
    for runner in RUNNERS:
        spaces[runner] = args.out / f"space-{runner}.yaml"
        spaces[runner].write_text(RUNNER_SPACE.format(trials=args.trials, image_size=args.image_size,
                                                      epochs=args.epochs, runner=runner))
    warm = args.out / "space-warmup.yaml"
    warm.write_text(RUNNER_SPACE.format(trials=1, image_size=args.image_size, epochs=1, runner="actor"))
    # Unmeasured: manifest, image cache and the OS page cache of every import, as the measured searches find them.
    run_runner_search(args, "warmup", 1, 0, spaces, env, commit, trials=1, epochs_space=warm)
    searches, k = [], 0
    for repeat in range(args.repeats):
        for c in args.concurrency:
            order = RUNNERS if k % 2 == 0 else RUNNERS[::-1]
            k += 1
            for runner in order:
                command_s, name, code = run_runner_search(args, runner, c, repeat, spaces, env, commit)
                trials, search = runner_rows(args.out, name, c)
                search.update(name=name, runner=runner, concurrency=c, repeat=repeat, command_s=command_s,
                              code=code, order=list(order), trials=[{k2: (round(v, 3) if isinstance(v, float) else v)
                                                          for k2, v in t.items()} for t in trials])
                searches.append(search)
                print(json.dumps({k2: v for k2, v in search.items() if k2 != "trials"}), flush=True)
    codes = sorted({s["code"] for s in searches})
    return {"code": codes[0] if len(codes) == 1 else codes, "code_patches": patched,
            "summary": runner_summary(searches), "searches": searches}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("versions", "runners"), default="versions",
                   help="versions: before/after --before-commit; runners: search.runner actor vs train")
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trials", type=int, help="trials per search (default: 2; runners: 6)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: 5; runners: 2)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--limit-per-class", type=int, default=300)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1],
                   help="runners: --max-concurrent of the searches, e.g. 1 2")
    p.add_argument("--code", default="HEAD", help="runners: the commit whose tune_ct runs, or 'worktree'")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--before-commit", default="0c72c4c", help="the 'before' code (the last commit before the changes)")
    p.add_argument("--imports", type=int, default=5, help="rounds of the interleaved import-time check (0: skip)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "runners":
        args.trials, args.epochs = args.trials or 6, args.epochs or 2
        result = compare_runners(args)
        print(json.dumps(result["summary"], indent=1))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "date": time.strftime("%Y-%m-%d %H:%M"),
                # every search's command wall, the unmeasured warm-up included (searches already done are reused)
                "machine_time_s": round(sum(json.loads(f.read_text())["command_s"]
                                            for f in args.out.glob("wall-*.json"))),
                "settings": {k: str(v) for k, v in vars(args).items()}, **result}, indent=1))
        return 0
    args.trials, args.epochs = args.trials or 2, args.epochs or 5
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
