"""Leave-one-origin-out check: did the model learn the disease, or the hospital?

    python -m tune_ct.origins --data DIR --sources CSV --holdout ORIGIN [--summary summary.json | --config FILE]

Trains the same configuration twice with the same budget, once on all train/val images and once without the
images of one origin, then tests both on the locked test split (training: tune_ct/train/origin_holdout.py; the comparison:
tune_ct/evaluate/leave_one_out.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tune_ct.commands.common import add_data_args, console_logging, data_settings, exit_on, write_json
from tune_ct.data.files import DataError
from tune_ct.evaluate.leave_one_out import print_comparison
from tune_ct.train.hyperparameters import Hyperparameters
from tune_ct.train.origin_holdout import HoldoutOptions, run_holdout_check
from tune_ct.train.stop_signals import stopped_by
from tune_ct.train.space import SpaceError, load_space
from tune_ct.train.storage import resolve_storage


def base_config(summary: Path | None, config: Path | None, epochs: int | None) -> dict:
    """Hyperparameters: a search summary's best_config, a space/params file with fixed values, or the defaults."""
    hp = Hyperparameters().as_dict()
    if summary:
        hp.update(json.loads(Path(summary).read_text())["best_config"])
    elif config:
        space = load_space(config)
        ranged = [k for k, v in space.params.items() if isinstance(v, dict)]
        if ranged:
            raise SpaceError(f"{config}: params {', '.join(ranged)} are distributions; the check needs fixed values")
        hp.update(space.params)
    if epochs:
        hp["epochs"] = epochs
    return hp


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tune_ct.origins", description=__doc__.split("\n\n")[0])
    add_data_args(p, limit_help="N images per class from the locked splits (smoke runs)")
    p.add_argument("--holdout", required=True, help="the origin to leave out of training, e.g. kermany-pediatric")
    p.add_argument("--summary", type=Path, help="a search --summary JSON: use its best_config")
    p.add_argument("--config", type=Path, help="a space YAML whose params are all fixed values")
    p.add_argument("--epochs", type=int, help="override the epochs of the configuration")
    p.add_argument("--storage", help="Ray Train storage (default ./ray_results)")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    p.add_argument("--json", type=Path, help="write the comparison here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console_logging()

    def check() -> int:
        options = HoldoutOptions(data=data_settings(args), holdout=args.holdout,
                                 hp=base_config(args.summary, args.config, args.epochs),
                                 storage=resolve_storage(args.storage), address=args.address)
        try:
            result = run_holdout_check(options)
        except KeyboardInterrupt as exc:
            stop = stopped_by(exc)
            print(f"\norigins check stopped ({stop.name}): nothing was compared; Ray was shut down", file=sys.stderr)
            return stop.exit_status
        print_comparison(options.holdout, result["models"], result["classes_without_training_images"])
        if args.json:
            write_json(args.json, result)
        return 0

    return exit_on((DataError, SpaceError), check)


if __name__ == "__main__":
    sys.exit(main())
