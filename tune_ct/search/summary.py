"""SearchSummary: what a search found, built once when it is over and before anything logs it.

The console, the --summary file, the MLflow copy (summary.json on the parent run), the parent run's description
and `python -m tune_ct.report` all read this one object, so they say the same thing. Adding a figure is a field
here (with its default, so summaries written before it still load) and a value where it is built
(tune_ct.search.pipeline.summarize).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

TRACKING_PREFIX = "tracking_"  # the outcome of logging the summary itself: in the --summary file alone


@dataclass(frozen=True)
class SearchSummary:
    name: str  # the search: Tune experiment, MLflow parent run name, Optuna study
    parent_run_id: str
    best_trial_id: str
    best_run_id: str | None  # the winner's child run
    best_config: dict
    best_epoch: int
    best_checkpoint: str
    # How the winner was chosen: {metric, mode, value, split ("val" or "select-on set NAME")}.
    selection: dict
    val_metrics: dict  # the winner's val-split figures at its best epoch ({"split": "val", ...})
    test_metrics: dict  # its locked-test headline (split, n, accuracy, balanced accuracy, macro-F1, recall, ...)
    test_report: dict  # the full locked-test report (CIs, per class, calibration, by origin)
    lung_focus: dict
    model_uri: str
    registered_model: str | None
    registered_version: str | None
    child_run_ids: list
    trials: int
    trials_errored: int
    data: str
    manifest: str
    manifest_hash: str
    trainval_subset: str
    workdir: str  # the work folder: manifests, file lists, image caches
    limit_per_class: int | None
    space: str
    storage: str
    seconds: float
    optuna_storage: str | None = None
    optuna_study: str | None = None
    select_on: dict | None = None  # {name, root, hash, n, classes}: the films the search selected on
    sampler: dict | None = None  # {kind, n_startup_trials, why}: the Optuna sampler and why it was chosen
    warm_start: dict | None = None  # {studies, imported, skipped, refused}: what --warm-start brought in
    best_costs: dict | None = None
    collections: dict | None = None  # collections added to the primary --data folder: name -> folder
    # Which origins were trained on, selected on and held out ({trained_on, selected_on, held_out}: lists).
    origins: dict | None = None
    # The held-out origins' films, scored once by the winner: {split, pooled, per_origin} (evaluate/held_out.py).
    held_out: dict | None = None
    best_model_id: str | None = None  # the winner's trial model (an MLflow LoggedModel; its weights in the storage)
    trial_models: list = field(default_factory=list)  # every trial's model, best first on the search metric
    orphan_child_runs: list = field(default_factory=list)
    time_budget_s: float | None = None
    stopped_by_time_budget: list = field(default_factory=list)
    tracking_delayed_calls: int = 0  # trial log calls that went through on a retry after the server dropped out
    tracking_unlogged: list = field(default_factory=list)  # trial log calls that never reached MLflow
    # A multi-objective search: the objectives, the Pareto front (val split), every trial's point, the pick.
    objectives: dict | None = None
    pareto_front: list | None = None
    trial_points: list | None = None
    pick: dict | None = None
    trials_on_front: int | None = None
    trials_without_objectives: list | None = None

    @property
    def test_ci95(self) -> dict:
        return self.test_report.get("ci95", {})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "SearchSummary":
        """A summary read back (summary.json); keys this version does not know are left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})
