"""What a command pays on the way out: the interpreter's last garbage collection over torch's, Ray's and MLflow's
objects, with and without `gc.freeze()` as the last exit handler (what tune_ct.commands.common.exit_on registers).

    python bench/command_exit.py --repeats 5

Each repeat starts two fresh processes side by side in time (alternating which goes first) that import what
`python -m tune_ct.search` imports and exit; it prints the seconds from the last exit handler to the process's end
and the ratio of the two. Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from machine import cpu_model

CHILD = """
import atexit, gc, sys, time
if sys.argv[1] == "freeze":
    atexit.register(gc.freeze)  # registered first: runs last
atexit.register(lambda: print(time.time(), flush=True))  # runs before the freeze, after the imports' handlers
import tune_ct.search.pipeline, tune_ct.train.trial, tune_ct.search.final_test, ray.tune, mlflow, timm
"""


def exit_seconds(mode: str) -> float:
    """Seconds from the exit handlers' start to the process's end, seen by the parent."""
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    ended = time.time()
    return ended - float(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    times: dict[str, list[float]] = {"plain": [], "freeze": []}
    for i in range(args.repeats):
        for mode in (("plain", "freeze") if i % 2 == 0 else ("freeze", "plain")):
            times[mode].append(exit_seconds(mode))
    plain, frozen = statistics.median(times["plain"]), statistics.median(times["freeze"])
    print(f"CPU: {cpu_model()}; {args.repeats} repeats, median seconds from the exit handlers to the end")
    for mode, values in times.items():
        print(f"  {mode:7s} median {statistics.median(values):.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"  freeze / plain: {frozen / plain:.2f}; saved per command: {plain - frozen:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
