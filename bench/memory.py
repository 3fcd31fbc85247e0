"""Memory of a reused trial process over many short trials: does it stay flat?

    python bench/memory.py --data DIR --trials 100 --out bench/results/memory.json

Runs a real search (`python -m tune_ct.search`, actor runner, one trial at a time, so one trial process serves
every trial) of short trials whose image size alternates between two sizes (two memory-mapped caches), and samples
that process's memory from /proc five times a second: anonymous memory (heap: models, optimiser state, Python
objects) and file-backed memory (the memory-mapped image caches and loaded libraries) apart. The growth is taken
from the trials 5-14 (caches open, libraries loaded) to the last ten, per kind, as medians of the samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SPACE = {"description": "many short trials for the memory benchmark",
         "search": {"metric": "val_macro_f1", "max_concurrent": 1, "runner": "actor"},
         "params": {"backbone": "baseline_cnn", "image_size": {"choice": [32, 48]}, "epochs": 1, "batch_size": 16,
                    "lr": {"loguniform": [1.0e-3, 1.0e-2]}}}


def trial_processes() -> list[int]:
    """Pids of Tune's trial actor processes (the function trainable runs in `ray::ImplicitFunc`)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                out.append(int(entry.name))
        except OSError:
            pass
    return out


def memory_kib(pid: int) -> dict[str, int] | None:
    """RssAnon (heap) and RssFile (file-backed: memory maps, libraries) of a process, in KiB."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return None
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")}


def trials_done(folder: Path) -> int:
    """Trials the search has finished, as its Optuna study counts them."""
    import optuna

    try:
        study = optuna.load_study(study_name="memory", storage=f"sqlite:///{folder / 'optuna.db'}")
    except Exception:  # noqa: BLE001 - not created yet, or the search is writing
        return 0
    return sum(1 for t in study.trials if t.state.is_finished())


def sample(proc: subprocess.Popen, folder: Path) -> list[dict]:
    """(time, trials done, memory) five times a second while the search runs."""
    samples, started = [], time.monotonic()
    while proc.poll() is None:
        time.sleep(0.2)
        pids = trial_processes()
        mem = memory_kib(pids[0]) if len(pids) == 1 else None
        if mem:
            samples.append({"t": round(time.monotonic() - started, 1), "trials": trials_done(folder), "pid": pids[0],
                            **mem})
    return samples


def growth(samples: list[dict], start_trial: int, window: int = 10) -> dict:
    """Per kind, the median of the samples taken while trials start_trial .. start_trial+window-1 ran against the
    median over the last `window` trials: one sample can catch a trial at its peak or between trials, a median of
    ~20 cannot be moved by one."""
    import statistics

    if not samples or len({s["pid"] for s in samples}) != 1:
        return {"error": "no single trial process sampled across the run"}
    end = samples[-1]["trials"]
    first = [s for s in samples if start_trial <= s["trials"] < start_trial + window]
    last = [s for s in samples if end - window <= s["trials"] <= end]
    out = {}
    for k in ("VmRSS", "RssAnon", "RssFile"):
        a, b = statistics.median(s[k] for s in first), statistics.median(s[k] for s in last)
        out[k] = {"trials_%d_%d" % (start_trial, start_trial + window - 1): a, "last_%d_trials" % window: b,
                  "growth_pct": round(100 * (b / a - 1), 2)}
    return out | {"trials_at_end": end, "samples": (len(first), len(last))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--limit-per-class", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("bench/results/memory.json"))
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    cmd = [sys.executable, "-m", "tune_ct.search", "--data", args.data, "--space", str(folder / "space.yaml"),
           "--limit-per-class", str(args.limit_per_class), "--num-samples", str(args.trials), "--name", "memory",
           "--sampler", "random", "--scheduler", "none", "--register-name", ""]
    with open(folder / "search.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)
        samples = sample(proc, folder)
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
              "command": " ".join(cmd), "exit": proc.returncode, "growth_from_trial_5": growth(samples, 5),
              "samples": samples}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["growth_from_trial_5"], indent=1))
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
