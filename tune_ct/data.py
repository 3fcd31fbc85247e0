"""The data stage as a command: scan a dataset, update its locked manifest, print what was found.

    python -m tune_ct.data --data DIR [--sources CSV] [--json FILE] [--workdir DIR]

The search calls `prepare` too, so it always trains on the manifest this command shows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tune_ct import manifest as mf
from tune_ct.cache import write_subset
from tune_ct.files import CLASSES, DataError, resolve_data_dir

WORKDIR_ENV = "TUNE_CT_WORKDIR"


@dataclass
class Prepared:
    root: Path
    manifest: mf.Manifest
    manifest_path: Path
    report: mf.LockReport
    trainval_path: Path  # the only file list trials receive
    trainval_entries: list
    seconds: float


def default_workdir() -> Path:
    return Path(os.environ.get(WORKDIR_ENV, ".tune_ct")).resolve()


def manifest_path_for(root: Path, workdir: Path) -> Path:
    return workdir / "manifests" / f"{root.name.replace(' ', '_')}.manifest.json"


def prepare(data: str | Path | None, workdir: Path, sources: Path | None = None, seed: int = 0,
            limit_per_class: int | None = None, manifest_path: Path | None = None, log=print) -> Prepared:
    """Build or update the locked manifest, and write the train/val file list that trials may read."""
    started = time.monotonic()
    root = resolve_data_dir(data)
    path = manifest_path or manifest_path_for(root, workdir)
    manifest, report = mf.build(root, path, sources=sources, seed=seed, log=log)
    usable = [e for e in sample(manifest, limit_per_class, seed) if e.split in ("train", "val")]
    suffix = f"-limit{limit_per_class}" if limit_per_class else ""
    trainval = workdir / "subsets" / f"{manifest.hash}{suffix}.trainval.json"
    write_subset(trainval, root, usable, manifest.hash)
    return Prepared(root, manifest, path, report, trainval, usable, time.monotonic() - started)


def sample(manifest: mf.Manifest, limit_per_class: int | None, seed: int) -> list[mf.Entry]:
    """All entries, or N per class drawn across the locked splits in proportion (for smoke runs)."""
    return mf.limit_per_class(manifest.entries, limit_per_class, seed) if limit_per_class else list(manifest.entries)


def summary(prep: Prepared) -> dict:
    m = prep.manifest
    groups = mf.duplicate_groups(m)
    exact = [g for g in groups if len({e.sha for e in g}) == 1]
    straddling = [g for g in groups if len({e.split for e in g}) > 1]
    origins: dict[str, Counter] = {s: Counter() for s in mf.SPLITS}
    for e in m.entries:
        origins[e.split][f"{e.label} / {e.origin}"] += 1
    return {
        "data": str(prep.root),
        "manifest": str(prep.manifest_path),
        "manifest_hash": m.hash,
        "files_total": len(m.entries) + len(m.rejected) + len(m.ignored),
        "files_used": len(m.entries),
        "rejected": m.rejected,
        "ignored": m.ignored,
        "converted": [{"file": e.file, "conversion": e.conversion} for e in m.entries if e.conversion],
        "duplicate_groups": [[e.file for e in g] for g in groups],
        "duplicate_groups_exact": len(exact),
        "duplicate_groups_near": len(groups) - len(exact),
        "files_in_duplicate_groups": sum(len(g) for g in groups),
        "groups_straddling_splits": len(straddling),
        "near_duplicate_bits": m.near_duplicate_bits,
        "counts": mf.split_counts(m),
        "origins": {s: dict(sorted(c.items())) for s, c in origins.items()},
        "splits": {s: [e.file for e in m.entries if e.split == s] for s in mf.SPLITS},
        "lock": {"new_files": prep.report.new_files, "test_missing": prep.report.test_missing,
                 "test_changed": prep.report.test_changed, "moved": prep.report.moved},
        "seconds": round(prep.seconds, 2),
    }


def print_summary(s: dict, out=sys.stdout) -> None:
    w = max(len(c) for c in CLASSES)
    print(f"dataset  {s['data']}\nmanifest {s['manifest']} (hash {s['manifest_hash']})", file=out)
    print(f"\n{'class':<{w}}  {'train':>6} {'val':>6} {'test':>6} {'total':>6}", file=out)
    for c in CLASSES:
        row = [s["counts"][split][c] for split in mf.SPLITS]
        print(f"{c:<{w}}  {row[0]:>6} {row[1]:>6} {row[2]:>6} {sum(row):>6}", file=out)
    totals = [sum(s["counts"][split].values()) for split in mf.SPLITS]
    print(f"{'all':<{w}}  {totals[0]:>6} {totals[1]:>6} {totals[2]:>6} {sum(totals):>6}", file=out)
    by_class = Counter()
    for g in s["duplicate_groups"]:
        by_class[g[0].split("/")[0]] += 1
    print(f"\nfiles: {s['files_total']} seen, {s['files_used']} used ({len(s['converted'])} converted), "
          f"{len(s['rejected'])} rejected, {len(s['ignored'])} ignored", file=out)
    print(f"duplicate groups: {len(s['duplicate_groups'])} ({s['duplicate_groups_exact']} pixel-identical, "
          f"{s['duplicate_groups_near']} near-identical at <= {s['near_duplicate_bits']} bits), "
          f"{s['files_in_duplicate_groups']} files; by class: {dict(sorted(by_class.items()))}; "
          f"groups straddling splits: {s['groups_straddling_splits']}", file=out)
    for r in s["rejected"][:20]:
        print(f"  rejected {r['file']}: {r['reason']}", file=out)
    if len(s["rejected"]) > 20:
        print(f"  ... and {len(s['rejected']) - 20} more rejected (see --json)", file=out)
    ignored_kinds = Counter(("masks/" if "/masks/" in f else Path(f).name if Path(f).name.startswith(".") else
                             Path(f).suffix or Path(f).name) for f in s["ignored"])
    if ignored_kinds:
        print(f"  ignored: {dict(sorted(ignored_kinds.items()))}", file=out)
    print("\norigins per split:", file=out)
    for split in mf.SPLITS:
        print(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in s["origins"][split].items()), file=out)
    lock = s["lock"]
    print(f"\nlocked split: {lock['new_files']} new file(s), {len(lock['moved'])} moved to join a test group, "
          f"{len(lock['test_missing'])} test file(s) missing, {len(lock['test_changed'])} changed", file=out)
    print(f"time: {s['seconds']:.1f}s", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tune_ct.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset folder (Kaggle layout); default $TUNE_CT_DATA")
    parser.add_argument("--sources", type=Path, help="CSV with `file` and `origin` columns")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help=f"manifests and caches (default ${WORKDIR_ENV} or ./.tune_ct)")
    parser.add_argument("--manifest", type=Path, help="manifest file (default under --workdir)")
    parser.add_argument("--seed", type=int, default=0, help="split seed for a new manifest (a locked one keeps its own)")
    args = parser.parse_args(argv)
    try:
        prep = prepare(args.data, (args.workdir or default_workdir()).resolve(), args.sources, args.seed,
                       manifest_path=args.manifest, log=lambda msg: print(msg, file=sys.stderr))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = summary(prep)
    print_summary(s)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
