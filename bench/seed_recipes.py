"""The seed's recipes vs the search's winner, same CPU budget, same locked test split.

    python bench/seed_recipes.py --data DIR --sources sources.csv --winner summary.json --out /tmp/seed \
        --json bench/results/seed_recipes.json

Each model of `search_spaces/seed_replica.yaml` (the seed notebooks' CNN, VGG16 and Xception with their fixed
settings: lr 1e-3, batch 32, no weight decay, no class weighting, light augmentation) is trained by
`python -m tune_ct.search` as a one-trial search at the budget the winner had in `--winner` (its image size, its
epochs), from scratch. The workdir is shared with the winner's search when `--workdir` names it, so all use the
same locked manifest; each is tested once on the locked test split, as the search does for its winner.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def recipe_space(backbone: str, image_size: int, epochs: int, cpus: int) -> dict:
    space = yaml.safe_load((REPO / "search_spaces/seed_replica.yaml").read_text())
    space["description"] = f"bench/seed_recipes.py: the seed's {backbone} recipe at {image_size} px, {epochs} epochs"
    space["search"].update(num_samples=1, max_concurrent=1, cpus_per_worker=cpus, grace_period=epochs)
    space["params"].update(backbone=backbone, image_size=image_size, epochs=epochs)
    return space


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--sources")
    p.add_argument("--winner", required=True, type=Path, help="the --summary JSON of the search to compare against")
    p.add_argument("--out", required=True, type=Path, help="working folder (MLflow store, Ray results, spaces)")
    p.add_argument("--workdir", type=Path, help="manifest and caches (share the winner's to share its split)")
    p.add_argument("--backbones", nargs="+", default=["baseline_cnn", "vgg16", "legacy_xception"])
    p.add_argument("--cpus", type=int, default=2, help="CPUs for each recipe's one trial")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    # The recipes run with their own working folder: relative paths would point elsewhere there.
    args.data = str(Path(args.data).resolve())
    args.sources = str(Path(args.sources).resolve()) if args.sources else None
    args.workdir = args.workdir.resolve() if args.workdir else None

    winner = json.loads(args.winner.read_text())
    size, epochs = int(winner["best_config"]["image_size"]), int(winner["best_config"]["epochs"])
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {"search winner": {"backbone": winner["best_config"]["backbone"], "seconds": winner.get("seconds"),
                              "val": winner["val_metrics"], "test": winner["test_metrics"]}}
    for backbone in args.backbones:
        space = args.out / f"seed_{backbone}.yaml"
        space.write_text(yaml.safe_dump(recipe_space(backbone, size, epochs, args.cpus), sort_keys=False))
        summary = args.out / f"seed_{backbone}.json"
        cmd = [sys.executable, "-m", "tune_ct.search", "--data", args.data, "--space", str(space),
               "--summary", str(summary), "--experiment", "seed_recipes", "--register-name", "",
               "--storage", str(args.out / "ray_results"), "--tracking-uri", f"sqlite:///{args.out / 'mlflow.db'}"]
        cmd += ["--sources", args.sources] if args.sources else []
        cmd += ["--workdir", str(args.workdir)] if args.workdir else []
        started = time.monotonic()
        with open(args.out / f"seed_{backbone}.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=args.out).returncode
        if rc != 0:
            print(f"{backbone}: search failed (exit {rc}), see {args.out / f'seed_{backbone}.log'}", file=sys.stderr)
            return rc
        s = json.loads(summary.read_text())
        rows[f"seed {backbone}"] = {"backbone": backbone, "seconds": round(time.monotonic() - started, 1),
                                    "val": s["val_metrics"], "test": s["test_metrics"]}

    print(f"\nSeed recipes vs the search winner ({size} px, {epochs} epochs, from scratch)")
    print(f"{'model':<28}{'wall s':>8}{'val macro-F1':>14}{'test acc':>10}{'test bal acc':>14}{'test macro-F1':>15}"
          "  test recall COVID / LO / Normal / VP")
    for name, r in rows.items():
        t, rec = r["test"], r["test"]["per_class_recall"]
        print(f"{name + ' (' + r['backbone'] + ')':<28}{r['seconds'] or 0:>8.0f}{r['val']['val_macro_f1']:>14.3f}"
              f"{t['accuracy']:>10.3f}{t['balanced_accuracy']:>14.3f}{t['macro_f1']:>15.3f}  "
              + " / ".join(f"{v:.3f}" for v in rec.values()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"image_size": size, "epochs": epochs, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
