"""Subset files: the list of files a stage may read, as a small JSON file (one writer, one reader).

A trial receives the train/val list and never the test split; the final evaluation receives the test list.
Names carry the manifest hash, and the sample size and seed of a limited sample, so two samples never share a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tune_ct.data.files import DataError
from tune_ct.data.manifest import Entry, Manifest, limit_per_class
from tune_ct.data.workdir import WorkFolder

SUBSET_VERSION = 1


def write_subset(path: Path, data_root: Path, entries, manifest_hash: str, file_of=None,
                 split: str | None = None) -> dict:
    """Write atomically: a reader sees the old list or the new one, never half a file. `file_of(entry)`: the path
    to list (default entry.file, under data_root); `split`: one split name for every film instead of theirs."""
    subset = {
        "version": SUBSET_VERSION,
        "data_root": str(data_root),
        "manifest_hash": manifest_hash,
        "files": [[file_of(e) if file_of else e.file, e.label, split or e.split, e.sha] for e in entries],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(subset, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return subset


def read_subset(path: Path) -> dict:
    try:
        subset = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read subset file {path} ({exc}); re-run `python -m tune_ct.data` to write it") from exc
    if subset.get("version") != SUBSET_VERSION:
        raise DataError(f"subset file {path} has version {subset.get('version')}, expected {SUBSET_VERSION}; "
                        "re-run `python -m tune_ct.data` to write it")
    return subset


def subset_path(work: WorkFolder, manifest_hash: str, limit_per_class: int | None, seed: int, part: str) -> Path:
    """Where a file list lives; a limited sample depends on the seed, so the seed is in its name."""
    suffix = f"-limit{limit_per_class}-seed{seed}" if limit_per_class else ""
    return work.subset(f"{manifest_hash}{suffix}.{part}")


def sample(manifest: Manifest, limit: int | None, seed: int) -> list[Entry]:
    """All entries, or N per class drawn across the locked splits in proportion (for smoke runs)."""
    return limit_per_class(manifest.entries, limit, seed) if limit else list(manifest.entries)


def write_split_subset(manifest: Manifest, data_root: Path, work: WorkFolder, limit: int | None, seed: int,
                       splits: tuple[str, ...], part: str, keep=None) -> tuple[Path, list[Entry]]:
    """The file list of some splits of the (sampled) manifest, optionally filtered by `keep(entry)`."""
    entries = [e for e in sample(manifest, limit, seed) if e.split in splits and (keep is None or keep(e))]
    path = subset_path(work, manifest.hash, limit, seed, part)
    write_subset(path, data_root, entries, manifest.hash, manifest.film_path)
    return path, entries


HELD_OUT_SPLIT = "holdout"


def held_out_copies(manifest: Manifest, held_out: tuple[str, ...]) -> list[Entry]:
    """Held-out films whose duplicate group also holds a film trials may train on."""
    trained = {e.group for e in manifest.entries if e.origin not in held_out and e.split in ("train", "val")}
    return [e for e in manifest.entries if e.origin in held_out and e.group in trained]


def write_held_out_subset(manifest: Manifest, data_root: Path, work: WorkFolder, seed: int,
                          held_out: tuple[str, ...]) -> tuple[Path, list[Entry]]:
    """Every film of the held-out origins, whatever its split, as one scoring set; not sampled by --limit-per-class
    (the trials' sample): an origin is scored whole. A film with a copy among the films trials train on (its
    duplicate group holds one of another origin in train or val) is left out: held_out_copies counts them."""
    copies = {e.key for e in held_out_copies(manifest, held_out)}
    entries = [e for e in manifest.entries if e.origin in held_out and e.key not in copies]
    path = subset_path(work, manifest.hash, None, seed, "holdout-" + "-".join(sorted(held_out)))
    write_subset(path, data_root, entries, manifest.hash, manifest.film_path, HELD_OUT_SPLIT)
    return path, entries
