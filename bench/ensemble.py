"""Averaging models' predictions, measured straight: the seeds of one `bench/generalise.py` recipe, their softmax
probabilities averaged with equal weights, against each seed alone, on the dev set's locked test split and on
external_dev's pairs A and B (which no run trains or selects on). A proxy for averaging a search's top trials:
issue 19 saw that cost 0.02 on the locked test and gain 0.03 outside.

    python bench/ensemble.py --data ../shared/data/COVID-19_Radiography_Dataset --sources ../shared/data/sources.csv \
        --external ../shared/data/external_dev --out /tmp/gen --variants base clahe_acq_ep8 --seeds 0 1 2 3 4 \
        --json bench/results/ensemble.json

It reads the checkpoints `bench/generalise.py --out` kept (`<out>/runs/<variant>-s<seed>/best`); run that first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from generalise import SETS, T95, labels_of, prepared  # bench/generalise.py, beside this script
from machine import cpu_model


def member(args, variant: str, seed: int, prep, settings) -> dict:
    """One seed's evaluations: the dev set's locked test films, then A and B."""
    from tune_ct.data.external_set import load_external
    from tune_ct.evaluate.evaluation import evaluate_on, locked_split_of
    from tune_ct.evaluate.external_score import external_test_set
    from tune_ct.model.checkpoint import load_checkpoint_model

    folder = args.out / "runs" / f"{variant}-s{seed}" / "best"
    if not (folder / "model.pt").exists():
        sys.exit(f"{folder}: no checkpoint; run bench/generalise.py --variants {variant} --seeds {seed} first")
    model, meta = load_checkpoint_model(folder)
    evs = {"test": evaluate_on(model, meta, locked_split_of(prep, settings))}
    for name, origins in SETS.items():
        ext = load_external(args.external, labels_of(args.external, origins, args.out), name=name)
        evs[name] = (evaluate_on(model, meta, external_test_set(ext, settings.work)), ext.classes_present)
    return evs


def figure(ev, classes=None, n_boot: int = 500) -> dict:
    from tune_ct.evaluate.full_report import full_report

    report = full_report(ev, n_boot, 0, classes=classes)
    return {"macro_f1": round(report["macro_f1"], 4), "ci95": [round(x, 4) for x in report["ci95"]["macro_f1"]]}


def averaged(evs: list):
    """The members' probabilities averaged film by film (every member saw the same films in the same order)."""
    from tune_ct.evaluate.evaluation import Evaluation
    from tune_ct.evaluate.metrics import classification_metrics

    first = evs[0]
    assert all(e.files == first.files for e in evs), "members scored different films"
    probs = np.mean([e.probs for e in evs], axis=0)
    metrics = classification_metrics(first.y_true, probs.argmax(1), prefix=f"{first.split}_")
    return Evaluation(first.split, first.files, first.y_true, probs, metrics, first.origins)


def paired(diffs: list[float]) -> dict:
    mean, sd = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
    half = T95.get(len(diffs) - 1, 2.0) * sd / math.sqrt(len(diffs))
    return {"mean": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)], "n": len(diffs)}


def compare(args, variant: str) -> dict:
    """The ensemble of the variant's seeds against each seed alone, set by set."""
    prep, settings = prepared(args, variant)
    members = [member(args, variant, s, prep, settings) for s in args.seeds]
    out = {}
    for name in ("test", *SETS):
        classes = None if name == "test" else members[0][name][1]
        evs = [m[name] if name == "test" else m[name][0] for m in members]
        alone = [figure(e, classes)["macro_f1"] for e in evs]
        together = figure(averaged(evs), classes)
        out[name] = {"members": alone, "members_mean": round(float(np.mean(alone)), 4), "ensemble": together,
                     "ensemble_minus_member": paired([together["macro_f1"] - a for a in alone])}
        print(f"{variant} {name}: members {np.mean(alone):.3f} (each {', '.join(f'{a:.3f}' for a in alone)}), "
              f"ensemble of {len(evs)} {together['macro_f1']:.3f} ({together['ci95'][0]:.3f}-"
              f"{together['ci95'][1]:.3f})", flush=True)
    out["protocol_pair_mean"] = round((out["A"]["ensemble"]["macro_f1"] + out["B"]["ensemble"]["macro_f1"]) / 2, 4)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--sources", type=Path)
    p.add_argument("--external", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="bench/generalise.py's --out (its runs are read)")
    p.add_argument("--variants", nargs="+", default=["clahe_acq_ep8"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if len(args.seeds) < 2:
        p.error("--seeds: an ensemble needs at least two")
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
              "command": " ".join(sys.argv), "seeds": args.seeds,
              "variants": {v: compare(args, v) for v in args.variants}}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
