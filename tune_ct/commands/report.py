"""A Markdown report of the newest search in an MLflow experiment, with its pictures.

    python -m tune_ct.report --experiment NAME --out DIR [--run-id PARENT] [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tune_ct.commands.common import add_tracking_arg, exit_on
from tune_ct.search.markdown_report import ReportError, find_parent, write_report
from tune_ct.track.uri import connect, resolve_tracking_uri


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tune_ct.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="tune_ct", help="MLflow experiment of the search")
    p.add_argument("--out", required=True, type=Path, help="folder for report.md and its pictures")
    p.add_argument("--run-id", help="the search's parent run (default: the newest finished search)")
    add_tracking_arg(p)
    args = p.parse_args(argv)

    def report() -> int:
        client = connect(resolve_tracking_uri(args.tracking_uri))
        print(f"wrote {write_report(client, find_parent(client, args.experiment, args.run_id), args.out)}")
        return 0

    return exit_on((ReportError,), report)


if __name__ == "__main__":
    sys.exit(main())
