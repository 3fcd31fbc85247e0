"""The search: Ray Tune + Optuna (TPE) + ASHA over the trials, tracked in MLflow, tested once at the end.

    python -m tune_ct.search --data DIR --space search_spaces/cpu_quick.yaml

Parse the command line into SearchOptions, run the search stage (tune_ct.search.pipeline), print its summary
and write it to --summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tune_ct.commands.common import (add_data_args, add_tracking_arg, console_logging, data_settings, exit_on,
                                     quiet_libraries, write_json)
from tune_ct.data.files import DataError
from tune_ct.model.errors import PretrainedError
from tune_ct.track.tags import DEFAULT_REGISTER_NAME
from tune_ct.search.options import SearchOptions
from tune_ct.search.store_lock import StoreBusyError
from tune_ct.track.server import TrackingError
from tune_ct.track.study import StudyError, resolve_storage_url
from tune_ct.track.uri import resolve_tracking_uri
from tune_ct.train.resources import ClusterError
from tune_ct.train.resume import ResumeError
from tune_ct.train.space import SAMPLERS, SCHEDULERS, SpaceError, parse_duration
from tune_ct.train.storage import resolve_storage


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tune_ct.search", description=__doc__.split("\n\n")[0])
    add_data_args(p, data_help="dataset folder in the Kaggle layout (default $TUNE_CT_DATA)", holdout=True)
    p.add_argument("--space", required=True, type=Path, help="search space YAML (see search_spaces/)")
    p.add_argument("--num-samples", type=int, help="trials to run (default: the space's search.num_samples)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's search.max_concurrent)")
    p.add_argument("--experiment", default="tune_ct", help="MLflow experiment name")
    add_tracking_arg(p)
    p.add_argument("--storage", help="Ray Tune/Train storage: a folder or s3:// URI (default ./ray_results)")
    p.add_argument("--summary", type=Path, help="write the result summary JSON here")
    p.add_argument("--register-name", default=DEFAULT_REGISTER_NAME,
                   help="MLflow registered model the best model is added to as a new version ('' logs it unregistered)")
    p.add_argument("--address", help="Ray cluster address, e.g. 127.0.0.1:6379 on the head node or 'auto' "
                   "(default: start a local Ray). Token auth: RAY_AUTH_MODE=token and the cluster's token in "
                   "~/.ray/auth_token or RAY_AUTH_TOKEN_PATH")
    p.add_argument("--name", help="Tune experiment name, the folder under --storage (default search-DATE-TIME)")
    p.add_argument("--resume", action="store_true",
                   help="continue the search --name (default: the newest) under --storage after its driver died: "
                   "finished trials are kept, unfinished ones resume from their checkpoints, same MLflow runs")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="Optuna's sampler (default: the space's search.sampler, auto: GP when no trial is stopped "
                   "early and the budget is small, else TPE); random: the baseline for benchmarks")
    p.add_argument("--scheduler", choices=SCHEDULERS,
                   help="asha: stop weak trials early (default); none: every trial runs all its epochs (the default "
                   "and only choice for a multi-objective space: ASHA ranks trials on one metric)")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="e.g. 15m, 90s, 2h (default: the space's search.time_budget): no trial starts after it, "
                   "running trials are stopped where they are, keeping the epochs they reported and their checkpoints")
    p.add_argument("--select-on", type=Path, metavar="DIR",
                   help="labelled films from other sources (class folders, or any folder with --select-on-labels): "
                   "cached like the val split, never trained on, scored every epoch as ext_val_*; set the space's "
                   "metric to ext_val_macro_f1 or blend_macro_f1 to select on them")
    p.add_argument("--select-on-labels", type=Path, metavar="CSV", help="file,label[,origin] CSV for --select-on")
    p.add_argument("--weights", action="append", default=[], metavar="BACKBONE=FILE",
                   help="local pretrained weights for a backbone (repeatable; wins over the space's pretrained: "
                   "true); without either, train from scratch")
    p.add_argument("--optuna-storage", metavar="URL",
                   help="Optuna storage for the search's study, one study per search named after --name (default "
                   "sqlite:///optuna.db in this folder; a team's postgresql+psycopg2://...); open it with "
                   "optuna-dashboard URL")
    p.add_argument("--warm-start", metavar="auto|NAME[,NAME]",
                   help="seed the new study with the finished and pruned trials of earlier studies in the same Optuna "
                   "storage that searched the same data for the same objectives (auto: every such study)")
    p.add_argument("--verbose", action="store_true",
                   help="also print Tune's per-trial output, Ray Train and worker logs (default: a compact trial "
                   "table; those go to the log files under the storage and Ray's session folder)")
    args = p.parse_args(argv)
    for name in ("num_samples", "max_concurrent", "limit_per_class"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


def parse_weights(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        backbone, sep, file = item.partition("=")
        if not sep or not backbone or not file:
            raise SpaceError(f"--weights {item!r}: expected BACKBONE=FILE")
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise SpaceError(f"--weights {item!r}: file {path} does not exist (tune_ct never downloads weights)")
        out[backbone] = str(path)
    return out


def options_from(args: argparse.Namespace, argv: list[str]) -> SearchOptions:
    if args.time_budget:
        try:
            parse_duration(args.time_budget)
        except ValueError as exc:
            raise SpaceError(f"--time-budget: {exc}") from None
    return SearchOptions(
        space=args.space, data=data_settings(args), tracking_uri=resolve_tracking_uri(args.tracking_uri),
        storage=resolve_storage(args.storage), experiment=args.experiment, name=args.name, resume=args.resume,
        num_samples=args.num_samples, max_concurrent=args.max_concurrent, sampler=args.sampler,
        scheduler=args.scheduler, weights=parse_weights(args.weights), register_name=args.register_name,
        address=args.address, summary=args.summary, select_on=args.select_on, select_on_labels=args.select_on_labels,
        time_budget=args.time_budget, argv=tuple(argv), verbose=args.verbose,
        optuna_storage=resolve_storage_url(args.optuna_storage), optuna_storage_given=bool(args.optuna_storage),
        warm_start=args.warm_start,
    )


def search(options: SearchOptions) -> int:
    """0: searched, tested, registered; 128 + N: stopped by signal N (the resume command was printed, or the
    signal came during the final test and registration, which finished)."""
    from tune_ct.search.console import print_late_stop, print_outcome
    from tune_ct.search.pipeline import run_search
    from tune_ct.train.stop_signals import Stopped, stopped_by

    try:
        finished = run_search(options)
    except KeyboardInterrupt as exc:
        return stopped_by(exc).exit_status
    print_outcome(finished.summary)
    if options.summary:
        write_json(options.summary, {**finished.summary.to_dict(), **finished.logged})
    if finished.late_signal is not None:
        stop = Stopped(finished.late_signal)
        print_late_stop(stop.name)
        return stop.exit_status
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    console_logging(args.verbose)
    quiet_libraries(args.verbose)
    errors = (SpaceError, DataError, TrackingError, ResumeError, ClusterError, StudyError, PretrainedError,
              StoreBusyError)
    return exit_on(errors, lambda: search(options_from(args, argv)))


if __name__ == "__main__":
    sys.exit(main())
