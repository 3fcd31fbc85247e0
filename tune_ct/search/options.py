"""What a search is told, parsed once from the command line (tune_ct.commands.search) into one frozen object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tune_ct.data.prepare import DataSettings
from tune_ct.track.tags import DEFAULT_REGISTER_NAME


@dataclass(frozen=True)
class SearchOptions:
    space: Path
    data: DataSettings
    tracking_uri: str
    storage: str  # Ray Tune/Train storage: an absolute folder or a URI
    experiment: str = "tune_ct"
    name: str | None = None  # the Tune experiment, MLflow parent run and Optuna study (default search-DATE-TIME)
    resume: bool = False
    num_samples: int | None = None  # default: the space's search.num_samples
    max_concurrent: int | None = None  # default: the space's search.max_concurrent
    sampler: str | None = None  # auto | tpe | gp | random; None: the space's search.sampler
    scheduler: str | None = None  # asha | none; None: asha, or none for a multi-objective space
    weights: dict[str, str] = field(default_factory=dict)  # backbone -> local weights file
    register_name: str = DEFAULT_REGISTER_NAME
    address: str | None = None  # Ray cluster address; None: a fresh local Ray
    summary: Path | None = None
    select_on: Path | None = None  # labelled films from other sources: scored every epoch, never trained on
    select_on_labels: Path | None = None
    time_budget: str | None = None  # overrides the space's search.time_budget
    argv: tuple[str, ...] = ()  # the command line, for the exact --resume command after an interruption
    verbose: bool = False  # Tune's own output, Ray Train and worker logs on the console too
    optuna_storage: str | None = None  # the TPE study's RDB URL (resolved); None: the study stays in memory
    optuna_storage_given: bool = False  # --optuna-storage was passed (a resumed search keeps its own otherwise)
    warm_start: str | None = None  # auto | NAME[,NAME]: seed the study with earlier studies' compatible trials
