"""The dataset's lung segmenter, trained once from its own masks and cached, for `lung_crop: true` trials.

Trained on the masks of train/val films only (the test split stays untouched), with its own held-out share of
those masks for the Dice it reports. Keyed by the train/val file list and the seed, so a changed dataset or a
different sample trains a new one; built under a lock and renamed into place, like the image caches.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from tune_ct.data.files import DataError
from tune_ct.data.prepare import Prepared
from tune_ct.data.workdir import WorkFolder

SEGMENTER_EPOCHS = 5  # held-out Dice 0.959 on 273 held-out masks of the shared set (BENCHMARKS.md)
log = logging.getLogger(__name__)


def ensure_segmenter(prep: Prepared, work: WorkFolder, seed: int, epochs: int = SEGMENTER_EPOCHS) -> tuple[Path, dict]:
    """(segmenter file, its report with the held-out Dice); trained now unless a cached one exists."""
    from tune_ct.model.lungs import find_mask_pairs, load_segmenter

    path = work.segmenter(f"{prep.trainval_path.stem}-seed{seed}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            # Masks live in the primary folder's Kaggle layout; an added collection's paths are relative to its own.
            pairs = find_mask_pairs(prep.root, [e.file for e in prep.trainval_entries if not e.collection])
            if not pairs:
                raise DataError(f"lung_crop: true needs lung masks (<class>/masks/<file name> under {prep.root}) "
                                "and none of the train/val films has one: add the dataset's masks/ folders or "
                                "set lung_crop: false")
            _train_and_save(prep.root, pairs, path, seed, epochs)
    return path, load_segmenter(path)[1]


def _train_and_save(root: Path, pairs: list, path: Path, seed: int, epochs: int) -> None:
    from tune_ct.model.lungs import load_pairs, save_segmenter, train_segmenter

    started = time.monotonic()
    log.info("training the lung segmenter on %d masks of train/val films (%d epochs)", len(pairs), epochs)
    model, report = train_segmenter(load_pairs(root, pairs), epochs=epochs, seed=seed, threads=os.cpu_count())
    save_segmenter(path, model, report)  # written atomically
    log.info("lung segmenter: held-out Dice %.3f on %d masks, %.0fs", report["dice_heldout"], report["n_heldout"],
             time.monotonic() - started)
