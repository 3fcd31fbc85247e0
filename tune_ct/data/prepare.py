"""Prepare a dataset for a search: update its locked manifest and write the train/val list trials may read.

The data command (`python -m tune_ct.data`), the search, the evaluation and the origins check all call
`prepare`, so each of them sees the manifest the data command shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tune_ct.data import manifest as mf
from tune_ct.data.files import resolve_data_dir
from tune_ct.data.subsets import write_split_subset
from tune_ct.data.workdir import WorkFolder


@dataclass
class Prepared:
    root: Path
    manifest: mf.Manifest
    manifest_path: Path
    report: mf.LockReport
    trainval_path: Path  # the only file list trials receive
    trainval_entries: list
    seconds: float


@dataclass(frozen=True)
class DataSettings:
    """Where the data is and how a limited sample is drawn: the same for every command."""

    data: str | Path | None  # --data, else $TUNE_CT_DATA
    work: WorkFolder
    sources: Path | None = None
    seed: int = 0
    limit_per_class: int | None = None
    manifest_path: Path | None = None


def prepare(settings: DataSettings) -> Prepared:
    """Build or update the locked manifest, and write the train/val file list that trials may read."""
    started = time.monotonic()
    root = resolve_data_dir(settings.data)
    path = settings.manifest_path or settings.work.manifest(root)
    manifest, report = mf.build(root, path, mf.BuildOptions(sources=settings.sources, seed=settings.seed))
    trainval, usable = write_split_subset(manifest, root, settings.work, settings.limit_per_class, settings.seed,
                                          ("train", "val"), "trainval")
    return Prepared(root, manifest, path, report, trainval, usable, time.monotonic() - started)
