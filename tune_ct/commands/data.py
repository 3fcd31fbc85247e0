"""The data stage as a command: scan a dataset, update its locked manifest, print what was found.

    python -m tune_ct.data --data DIR [--sources CSV] [--json FILE] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tune_ct.commands.common import add_data_args, console_logging, data_settings, exit_on, write_json
from tune_ct.data.files import DataError
from tune_ct.data.prepare import prepare
from tune_ct.data.overview import overview, print_overview


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="python -m tune_ct.data", description=__doc__.split("\n\n")[0])
    add_data_args(p, data_help="dataset folder (Kaggle layout); default $TUNE_CT_DATA",
                  limit_help="also write the train/val list of an N-per-class sample", holdout=True)
    p.add_argument("--json", type=Path, help="also write the summary as JSON here")
    p.add_argument("--manifest", type=Path, help="manifest file (default under --workdir)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = data_settings(args)
    console_logging()

    def scan() -> int:
        found = overview(prepare(settings), settings.sources)
        print_overview(found)
        if args.json:
            write_json(args.json, found)
        return 0

    return exit_on((DataError,), scan)


if __name__ == "__main__":
    sys.exit(main())
