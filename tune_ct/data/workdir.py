"""The work folder's layout, owned here alone: where manifests, file lists, image caches, lung segmenters and
downloaded checkpoints live (--workdir, else $TUNE_CT_WORKDIR, else ./.tune_ct).

    manifests/<data folder>[+<added>...].manifest.json   the locked split of a dataset (never deleted)
    subsets/<hash>[-limitN-seedS].<part>.json   the file lists a stage may read
    cache/<key>/                             uint8 memory-mapped images per (file list, size, preprocessing)
    segmenters/<train/val list>-seed<S>.lungs.pt
    best_checkpoint/<name>/                  a search winner's checkpoint fetched from remote storage
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WORKDIR_ENV = "TUNE_CT_WORKDIR"


@dataclass(frozen=True)
class WorkFolder:
    root: Path

    @classmethod
    def resolve(cls, given: Path | str | None = None) -> "WorkFolder":
        """--workdir, else $TUNE_CT_WORKDIR, else ./.tune_ct; always absolute."""
        return cls(Path(given or os.environ.get(WORKDIR_ENV, ".tune_ct")).expanduser().resolve())

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def manifest(self, data_root: Path, added: tuple[str, ...] = ()) -> Path:
        """The primary folder's manifest; with added collections, one per set of them (its lock taken from the
        primary's own manifest when it is made)."""
        name = "+".join((Path(data_root).name, *sorted(added))).replace(" ", "_")
        return self.root / "manifests" / f"{name}.manifest.json"

    def subset(self, name: str) -> Path:
        return self.root / "subsets" / f"{name}.json"

    def segmenter(self, name: str) -> Path:
        return self.root / "segmenters" / f"{name}.lungs.pt"

    def fetched_checkpoint(self, name: str) -> Path:
        return self.root / "best_checkpoint" / name
