"""Prepare a dataset for a search: update its locked manifest and write the train/val list trials may read.

The data command (`python -m tune_ct.data`), the search, the evaluation and the origins check all call
`prepare`, so each of them sees the manifest the data command shows.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from tune_ct.data import manifest as mf
from tune_ct.data.collections import Collection
from tune_ct.data.files import DataError, resolve_data_dir
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
    held_out: tuple[str, ...] = ()  # origins no trial sees: scored once at the end, like the locked test split
    more: tuple[Collection, ...] = ()  # the collections added to the primary one

    def trained_on(self) -> list[str]:
        return sorted({e.origin for e in self.trainval_entries})


@dataclass(frozen=True)
class DataSettings:
    """Where the data is and how a limited sample is drawn: the same for every command."""

    data: str | Path | None  # --data, else $TUNE_CT_DATA
    work: WorkFolder
    sources: Path | None = None
    seed: int = 0
    limit_per_class: int | None = None
    manifest_path: Path | None = None
    more: tuple[Collection, ...] = ()  # collections added to the primary one (further --data values)
    held_out: tuple[str, ...] = ()  # --holdout-origin: origins kept out of training and validation

    def keeps(self, entry) -> bool:
        return entry.origin not in self.held_out


def prepare(settings: DataSettings) -> Prepared:
    """Build or update the locked manifest, and write the train/val file list that trials may read (without the
    held-out origins' films)."""
    started = time.monotonic()
    root = resolve_data_dir(settings.data)
    added = tuple(c.name for c in settings.more)
    path = settings.manifest_path or settings.work.manifest(root, added)
    options = mf.BuildOptions(sources=settings.sources, seed=settings.seed, more=settings.more,
                              lock_from=settings.work.manifest(root) if added else None)
    manifest, report = mf.build(root, path, options)
    check_held_out(manifest, settings.held_out)
    trainval, usable = write_split_subset(manifest, root, settings.work, settings.limit_per_class, settings.seed,
                                          ("train", "val"), "trainval" + held_out_suffix(settings.held_out),
                                          keep=settings.keeps)
    return Prepared(root, manifest, path, report, trainval, usable, time.monotonic() - started, settings.held_out,
                    settings.more)


def as_recorded(settings: DataSettings, data: str | None, spec: str | None) -> DataSettings:
    """The data a registered model was trained on (its folder and data spec tags), unless --data was given."""
    from tune_ct.data.collections import read_data_spec

    if settings.data is not None:
        return settings
    more, held_out = read_data_spec(spec)
    return dataclasses.replace(settings, data=data, more=more, held_out=settings.held_out or held_out)


def held_out_suffix(held_out: tuple[str, ...]) -> str:
    return "".join(f"-without-{o}" for o in sorted(held_out))


def check_held_out(manifest: mf.Manifest, held_out: tuple[str, ...]) -> None:
    """Every held-out origin has films, and something is left to train on."""
    present = manifest.origins()
    unknown = [o for o in held_out if o not in present]
    if unknown:
        raise DataError(f"--holdout-origin {', '.join(unknown)}: no film of the data comes from it; origins "
                        f"present: {', '.join(present)}")
    if set(present) <= set(held_out):
        raise DataError(f"--holdout-origin holds out every origin ({', '.join(present)}): nothing left to train on")
