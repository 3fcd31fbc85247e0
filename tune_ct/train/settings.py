"""What every trial of a search shares, as plain data: the trial actor and Train controller unpickle it without
importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrialSettings:
    """What every trial of one search shares (not searched, so not in the Tune config)."""

    subset_path: str  # train/val file list; the test split is never in it
    cache_root: str
    storage_path: str
    experiment: str
    seed: int = 0
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    metric: str = "val_macro_f1"  # checkpoints are kept by this, so the best epoch's checkpoint is never deleted
    mode: str = "max"
    weights: dict[str, str] = field(default_factory=dict)  # backbone -> local weights file
    # --select-on: films from other sources, scored every epoch (ext_val_*), never trained on.
    ext_subset_path: str | None = None
    segmenter_path: str | None = None  # the lung segmenter a `lung_crop: true` trial crops with
    measure_speed: bool = False  # report cpu_ms_per_film (an objective of a multi-objective search)
