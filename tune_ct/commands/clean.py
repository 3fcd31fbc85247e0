"""What searches keep on disk, and removing what is no longer needed.

    python -m tune_ct.clean [--workdir DIR] [--storage DIR] [--older-than DAYS] [--cache-cap SIZE]
                            [--registered-searches] [--yes]

Lists the image caches of the work folder (size, image size, films, preprocessing, last use) and the searches
in the Tune storage (size, whether their winner is registered), marks what the rules allow to go, and removes it
only with --yes. Manifests (the test-split locks), file lists and lung segmenters are never removed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tune_ct.commands.common import add_tracking_arg, usage_error
from tune_ct.data.workdir import WorkFolder
from tune_ct.search.cleanup import Item, caches, mark, registered_searches, remove, searches
from tune_ct.track.uri import resolve_tracking_uri
from tune_ct.train.storage import resolve_storage

UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """'20G', '500M', '1.5t' -> bytes."""
    value = text.strip().lower().rstrip("b")
    try:
        return int(float(value[:-1]) * UNITS[value[-1]]) if value and value[-1] in UNITS else int(value)
    except ValueError:
        usage_error(f"--cache-cap {text!r}: expected a size such as 20G or 500M")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tune_ct.clean", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, help="the work folder (default $TUNE_CT_WORKDIR or ./.tune_ct)")
    p.add_argument("--storage", help="the Tune storage folder (default ./ray_results)")
    add_tracking_arg(p)
    p.add_argument("--older-than", type=float, metavar="DAYS", help="caches unused for more than DAYS may go")
    p.add_argument("--cache-cap", type=parse_size, metavar="SIZE",
                   help="keep the most recently used caches within SIZE (e.g. 20G); older ones may go")
    p.add_argument("--registered-searches", action="store_true",
                   help="searches whose winner is registered may go (the version carries its own weights)")
    p.add_argument("--yes", action="store_true", help="remove what the rules allow (default: only list it)")
    return p.parse_args(argv)


def print_items(items: list[Item]) -> None:
    now = time.time()
    for item in items:
        mark_text = f"  -> remove: {item.removable_because}" if item.removable_because else ""
        print(f"{item.kind:<6} {item.size / 2**20:9.1f} MiB  used {(now - item.last_use) / 86400:5.1f} days ago  "
              f"{item.path.name}: {item.what}{mark_text}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    storage = Path(resolve_storage(args.storage))
    work = WorkFolder.resolve(args.workdir)
    found = caches(work)
    if "://" not in str(storage) and storage.is_dir():
        registered = registered_searches(resolve_tracking_uri(args.tracking_uri)) if args.registered_searches else {}
        found += searches(storage, registered)
    items = mark(found, args.older_than, args.cache_cap, args.registered_searches)
    print(f"work folder {work.root}, Tune storage {storage}:")
    print_items(items)
    removable = [i for i in items if i.removable_because]
    total = sum(i.size for i in removable) / 2**20
    if not args.yes:
        print(f"{len(removable)} item(s), {total:.1f} MiB, may be removed: pass --yes to remove them")
        return 0
    print(f"removed {len(removable)} item(s), {remove(items) / 2**20:.1f} MiB freed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
