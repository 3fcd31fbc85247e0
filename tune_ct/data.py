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
    trainval = subset_path(workdir, manifest.hash, limit_per_class, seed, "trainval")
    write_subset(trainval, root, usable, manifest.hash)
    return Prepared(root, manifest, path, report, trainval, usable, time.monotonic() - started)


def subset_path(workdir: Path, manifest_hash: str, limit_per_class: int | None, seed: int, part: str) -> Path:
    """Where a file list lives; a limited sample depends on the seed, so the seed is in its name."""
    suffix = f"-limit{limit_per_class}-seed{seed}" if limit_per_class else ""
    return workdir / "subsets" / f"{manifest_hash}{suffix}.{part}.json"


def sample(manifest: mf.Manifest, limit_per_class: int | None, seed: int) -> list[mf.Entry]:
    """All entries, or N per class drawn across the locked splits in proportion (for smoke runs)."""
    return mf.limit_per_class(manifest.entries, limit_per_class, seed) if limit_per_class else list(manifest.entries)


def summary(prep: Prepared, sources: Path | None = None) -> dict:
    """Everything the data stage decided, as plain JSON-able data (files relative to the dataset folder)."""
    m = prep.manifest
    groups = mf.duplicate_groups(m)
    exact_sets = mf.exact_duplicate_sets(m)
    exact_shas = {g[0].sha for g in exact_sets}
    straddling = [g for g in groups if len({e.split for e in g}) > 1]
    mixed = [g for g in groups if len({e.label for e in g}) > 1]  # one film under two labels: a label conflict
    per_class = {c: {"groups": 0, "groups_with_exact": 0, "files_in_groups": 0, "exact_sets": 0, "exact_files": 0}
                 for c in CLASSES}
    for g in groups:
        row = per_class[Counter(e.label for e in g).most_common(1)[0][0]]
        row["groups"] += 1
        row["files_in_groups"] += len(g)
        row["groups_with_exact"] += any(e.sha in exact_shas for e in g)
    for g in exact_sets:
        per_class[g[0].label]["exact_sets"] += 1
        per_class[g[0].label]["exact_files"] += len(g)
    origins: dict[str, Counter] = {s: Counter() for s in mf.SPLITS}
    for e in m.entries:
        origins[e.split][f"{e.label} / {e.origin}"] += 1
    return {
        "data": str(prep.root),
        "manifest": str(prep.manifest_path),
        "manifest_hash": m.hash,
        "sources": str(sources) if sources else None,
        "files_total": len(m.entries) + len(m.rejected) + len(m.ignored),
        "files_used": len(m.entries),
        "rejected": m.rejected,
        "ignored": m.ignored,
        "converted": [{"file": e.file, "conversion": e.conversion} for e in m.entries if e.conversion],
        "duplicate_groups": [[e.file for e in g] for g in groups],
        "exact_duplicate_sets": [[e.file for e in g] for g in exact_sets],
        "duplicate_groups_per_class": per_class,
        "files_in_duplicate_groups": sum(len(g) for g in groups),
        "groups_straddling_splits": len(straddling),
        "groups_with_mixed_labels": [[f"{e.file} ({e.label})" for e in g] for g in mixed],
        "near_duplicate_bits": m.near_duplicate_bits,
        "counts": mf.split_counts(m),
        "origins": {s: dict(sorted(c.items())) for s, c in origins.items()},
        "origin_unknown": sum(e.origin == "unknown" for e in m.entries),
        "splits": {s: [e.file for e in m.entries if e.split == s] for s in mf.SPLITS},
        "lock": {"new_files": prep.report.new_files, "test_missing": prep.report.test_missing,
                 "test_changed": prep.report.test_changed, "moved": prep.report.moved,
                 "lost_test_since_lock": m.lost_test, "locked_since": m.created},
        "seconds": round(prep.seconds, 2),
    }


def _ignored_kind(file: str) -> str:
    parts = file.split("/")
    if any(p.lower() == "masks" for p in parts[:-1]):
        return "masks/"
    name = parts[-1]
    if name.startswith("."):
        return name if not name.startswith("._") else "._* (macOS)"
    return Path(name).suffix.lower() or name


def print_summary(s: dict, out=None) -> None:
    out = out or sys.stdout  # looked up per call, so redirected/captured stdout is honoured
    w = max(len(c) for c in CLASSES)
    print(f"dataset  {s['data']}\nmanifest {s['manifest']} (hash {s['manifest_hash']})", file=out)
    print(f"\n{'class':<{w}}  {'train':>6} {'val':>6} {'test':>6} {'total':>6}", file=out)
    for c in CLASSES:
        row = [s["counts"][split][c] for split in mf.SPLITS]
        print(f"{c:<{w}}  {row[0]:>6} {row[1]:>6} {row[2]:>6} {sum(row):>6}", file=out)
    totals = [sum(s["counts"][split].values()) for split in mf.SPLITS]
    print(f"{'all':<{w}}  {totals[0]:>6} {totals[1]:>6} {totals[2]:>6} {sum(totals):>6}", file=out)

    print(f"\nfiles: {s['files_total']} seen = {s['files_used']} used ({len(s['converted'])} converted) "
          f"+ {len(s['rejected'])} rejected + {len(s['ignored'])} ignored", file=out)
    for kind, n in sorted(Counter(c["conversion"] for c in s["converted"]).items()):
        print(f"  converted {n:>5}  {kind}", file=out)
    for r in s["rejected"][:30]:
        print(f"  rejected  {r['file']}: {r['reason']}", file=out)
    if len(s["rejected"]) > 30:
        print(f"  ... and {len(s['rejected']) - 30} more rejected (see --json)", file=out)
    for kind, n in sorted(Counter(_ignored_kind(f) for f in s["ignored"]).items()):
        print(f"  ignored   {n:>5}  {kind}", file=out)

    print(f"\nduplicate groups (pixel-identical, or 256-bit phash within {s['near_duplicate_bits']} bits):", file=out)
    print(f"{'class':<{w}}  {'groups':>6} {'files':>6}  {'pixel-identical sets':>20} {'files':>6}", file=out)
    for c in CLASSES:
        r = s["duplicate_groups_per_class"][c]
        print(f"{c:<{w}}  {r['groups']:>6} {r['files_in_groups']:>6}  {r['exact_sets']:>20} {r['exact_files']:>6}", file=out)
    print(f"{'all':<{w}}  {len(s['duplicate_groups']):>6} {s['files_in_duplicate_groups']:>6}  "
          f"{len(s['exact_duplicate_sets']):>20} {sum(len(g) for g in s['exact_duplicate_sets']):>6}", file=out)
    print(f"groups straddling splits: {s['groups_straddling_splits']} (each group is assigned to one split)", file=out)
    if s["groups_with_mixed_labels"]:
        print(f"WARNING: {len(s['groups_with_mixed_labels'])} group(s) hold the same film under different labels:",
              file=out)
        for g in s["groups_with_mixed_labels"][:10]:
            print("  " + ", ".join(g), file=out)

    print("\norigins per split" + ("" if s["sources"] else " (no --sources given: all unknown)") + ":", file=out)
    keys = sorted({k for split in mf.SPLITS for k in s["origins"][split]})
    kw = max([len(k) for k in keys] + [10])
    print(f"  {'class / origin':<{kw}}  {'train':>6} {'val':>6} {'test':>6}", file=out)
    for k in keys:
        print(f"  {k:<{kw}}  " + " ".join(f"{s['origins'][split].get(k, 0):>6}" for split in mf.SPLITS), file=out)
    if s["sources"] and s["origin_unknown"]:
        print(f"  WARNING: {s['origin_unknown']} image(s) are not listed in {s['sources']} (origin unknown)", file=out)
    lock = s["lock"]
    print(f"\nlocked split (since {lock['locked_since']}): {lock['new_files']} new file(s) this run, "
          f"{len(lock['moved'])} moved to join a test group, {len(lock['test_missing'])} test file(s) missing and "
          f"{len(lock['test_changed'])} changed this run; {len(lock['lost_test_since_lock'])} lost since the lock",
          file=out)
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
    s = summary(prep, args.sources)
    print_summary(s)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(s, indent=1))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
