"""What the data stage decided, as JSON-able data and as the tables `python -m tune_ct.data` prints."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from tune_ct.data import manifest as mf
from tune_ct.data.files import CLASSES
from tune_ct.data.prepare import Prepared


def overview(prep: Prepared, sources: Path | None = None) -> dict:
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
        "converted": [{"file": e.key, "conversion": e.conversion} for e in m.entries if e.conversion],
        "duplicate_groups": [[e.key for e in g] for g in groups],
        "exact_duplicate_sets": [[e.key for e in g] for g in exact_sets],
        "duplicate_groups_per_class": per_class,
        "files_in_duplicate_groups": sum(len(g) for g in groups),
        "groups_straddling_splits": len(straddling),
        "groups_with_mixed_labels": [[f"{e.key} ({e.label})" for e in g] for g in mixed],
        "near_duplicate_bits": m.near_duplicate_bits,
        "collections": {"primary": str(prep.root), **m.collections},
        "groups_across_collections": sum(len({e.collection for e in g}) > 1 for g in groups),
        "held_out_origins": list(prep.held_out),
        "counts": mf.split_counts(m),
        "origins": {s: dict(sorted(c.items())) for s, c in origins.items()},
        "origin_unknown": sum(e.origin == "unknown" for e in m.entries),
        "splits": {s: [e.key for e in m.entries if e.split == s] for s in mf.SPLITS},
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


def print_overview(s: dict, out=None) -> None:
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
    if len(s["collections"]) > 1:
        print("collections: " + ", ".join(f"{k} {v}" for k, v in s["collections"].items())
              + f"; {s['groups_across_collections']} group(s) span two or more of them", file=out)
    if s["held_out_origins"]:
        print(f"held out (never trained or validated on, scored at the end): {', '.join(s['held_out_origins'])}",
              file=out)
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
