"""Promote a registered model to `@champion` if it passes the gates on the locked test split.

    python -m tune_ct.promote --model NAME [--version V] [--gates FILE] [--dry-run]

Exit status 0: promoted (or would be with --dry-run); 1: a gate failed and nothing changed; 2: a usage or
loading error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tune_ct.commands.common import add_data_args, add_tracking_arg, console_logging, data_settings, exit_on
from tune_ct.data.files import DataError
from tune_ct.registry.gates import DEFAULT_GATES, GateError
from tune_ct.registry.models import ModelLoadError
from tune_ct.registry.promotion import PromoteOptions, promote
from tune_ct.track.uri import resolve_tracking_uri


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tune_ct.promote", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="registered model name (e.g. cxr-classifier)")
    p.add_argument("--version", help="candidate version (default: the newest)")
    p.add_argument("--gates", type=Path, help=f"gates YAML (default {DEFAULT_GATES})")
    p.add_argument("--dry-run", action="store_true", help="evaluate and check the gates; change nothing")
    add_data_args(p, data_help="dataset folder (default: the one the candidate was trained on, else $TUNE_CT_DATA)",
                  limit_help="use the test images of an N-per-class sample (smoke runs)")
    add_tracking_arg(p)
    p.add_argument("--json", type=Path, help="write the decision, gates and both evaluations here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = PromoteOptions(model=args.model, tracking_uri=resolve_tracking_uri(args.tracking_uri),
                             data=data_settings(args), version=args.version, gates=args.gates,
                             dry_run=args.dry_run, json=args.json)
    console_logging()
    return exit_on((GateError, ModelLoadError, DataError), lambda: promote(options))


if __name__ == "__main__":
    sys.exit(main())
