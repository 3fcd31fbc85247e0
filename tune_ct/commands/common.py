"""What every command shares: the data flags, console logging, domain errors as exit status 2, JSON output."""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn
from pathlib import Path

from tune_ct.data.collections import parse_data_values
from tune_ct.data.files import DataError
from tune_ct.data.prepare import DataSettings
from tune_ct.data.workdir import WORKDIR_ENV, WorkFolder


MORE_DATA = ("; repeat it to add collections (DIR, NAME=DIR, or a YAML file listing them: "
             "docs/data.md), each its own origin, in one manifest")


def add_data_args(p: argparse.ArgumentParser, data_help: str = "dataset folder (default $TUNE_CT_DATA)",
                  limit_help: str = "use N images per class (from the locked splits): smoke runs",
                  holdout: bool = False) -> None:
    p.add_argument("--data", action="append", metavar="DIR", help=data_help + MORE_DATA)
    if holdout:
        p.add_argument("--holdout-origin", action="append", metavar="NAME", default=[],
                       help="keep this origin's films out of training and validation and score them once at "
                       "the end, per origin (repeatable)")
    p.add_argument("--sources", type=Path, help="CSV with file,origin columns")
    p.add_argument("--workdir", type=Path, help=f"manifests and image caches (default ${WORKDIR_ENV} or ./.tune_ct)")
    p.add_argument("--limit-per-class", type=int, help=limit_help)
    p.add_argument("--seed", type=int, default=0, help="seed of the split of a new manifest, samples and training")


def usage_error(message: str) -> NoReturn:
    """A command line that cannot work: one line on stderr, exit status 2 (as argparse does)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def data_settings(args: argparse.Namespace, data: str | Path | None = None) -> DataSettings:
    """The data flags as one object: the first --data value is the primary collection, the others are added."""
    if args.limit_per_class is not None and args.limit_per_class < 1:
        usage_error(f"--limit-per-class must be at least 1, got {args.limit_per_class}")
    values = [str(data)] if data else list(args.data or [])
    try:
        found = parse_data_values(values, args.sources)
    except DataError as exc:
        usage_error(str(exc))
    if found and (found[0].labels or found[0].origins or found[0].classes):
        usage_error(f"--data: the first collection ({found[0].name}) is read in the Kaggle layout "
                    "(<class>/images/*); list a labels-CSV, origins or classes collection after it")
    held_out = tuple(dict.fromkeys(getattr(args, "holdout_origin", None) or ()))
    return DataSettings(data=found[0].root if found else None, work=WorkFolder.resolve(args.workdir),
                        sources=found[0].sources if found else args.sources, seed=args.seed,
                        limit_per_class=args.limit_per_class, manifest_path=getattr(args, "manifest", None),
                        more=tuple(found[1:]), held_out=held_out)


def add_tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else "
                   "sqlite:///./mlflow.db with artifacts in ./mlartifacts)")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each message (a redirected or captured stderr too)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def console_logging(verbose: bool = False) -> None:
    """Library code logs through `logging`; a command shows tune_ct's INFO messages (DEBUG with --verbose)."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tune_ct")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def quiet_libraries(verbose: bool = False) -> None:
    """What the libraries a command drives may print: their warnings and errors always, their INFO chatter (MLflow's
    database set-up, Optuna's "study created", MLflow's artifact download bars) only with --verbose. Set through
    the environment too, so a library imported later, or in a local Ray worker, starts the same way."""
    import optuna

    level = logging.INFO if verbose else logging.WARNING
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(level)
    optuna.logging.set_verbosity(level)


def exit_on(errors: tuple[type[Exception], ...], fn: Callable[[], int | None]) -> int:
    """Run a command; an expected error (bad input, an unusable server) prints one line and exits 2."""
    # Registered first, so it runs after every other exit handler (Ray's shutdown, MLflow's flush): the collection
    # the interpreter runs over torch's, Ray's and MLflow's objects on the way out frees nothing the OS does not
    # and cost 1.5-3 s per command on 2 cores (every search, evaluate and predict; tens of them in the tests).
    atexit.register(gc.freeze)
    try:
        return fn() or 0
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def write_json(path: Path, obj) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)
