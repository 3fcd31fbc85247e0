"""The plan of a search: everything decided before Ray starts, checked so that a mistake costs seconds, not a night
of GPUs, and frozen once built (`fit_to_cluster` in tune_ct.search.cluster gives a new plan with the cluster's
share filled in).

Order: the checks that write nothing (tune_ct.search.checks, run first); then the data (manifest and the
train/val list), the search's name (and on --resume its parent run), the Optuna study, the --select-on films and
the lung segmenter.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tune_ct.data.external_set import ExternalSet
from tune_ct.data.prepare import DataSettings, Prepared, prepare
from tune_ct.data.workdir import WorkFolder
from tune_ct.search.options import SearchOptions
from tune_ct.track import tags
from tune_ct.train.space import Space, SpaceError, parse_duration
from tune_ct.train.tuner import Sampler, resolve_sampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectOn:
    """--select-on: films from other sources, cached like the val split and scored every epoch."""

    films: ExternalSet
    subset: Path  # their file list, which every trial caches
    labels_csv: Path | None


@dataclass(frozen=True)
class Segmenter:
    """The dataset's lung segmenter, when the space can choose lung_crop: true."""

    path: Path
    report: dict  # its held-out Dice and what it was trained on


@dataclass(frozen=True)
class SearchPlan:
    options: SearchOptions
    space: Space
    data: Prepared
    name: str  # the Tune experiment, the MLflow parent run's name and the Optuna study's
    experiment_id: str
    num_samples: int
    scheduler: str  # asha | none
    sampler: Sampler  # the Optuna sampler, resolved (kind, random start-up, why)
    time_budget_s: float | None
    study_storage: str | None  # where the Optuna study is, when the searcher keeps one
    select_on: SelectOn | None
    segmenter: Segmenter | None
    resumed_parent_id: str | None  # --resume: the parent run to continue
    warm_start: object | None = None  # tune_ct.track.warm_start.WarmStart: what --warm-start brought in
    gpus_per_worker: float = 0.0  # set by fit_to_cluster, once Ray is up
    max_concurrent: int = 1

    @property
    def work(self) -> WorkFolder:
        return self.options.data.work


def plan_search(options: SearchOptions, space: Space, data: Prepared, client) -> SearchPlan:
    """The name (and on --resume the parent run), the study, the selection set and the segmenter."""
    from tune_ct.track.parent_run import open_experiment

    experiment_id = open_experiment(client, options.experiment, options.tracking_uri)
    name, parent_id = name_and_parent(options, client, experiment_id)
    select_on = prepare_selection(options, space)
    if select_on is not None:
        check_selection_apart(select_on.films, data)
    study = plan_study(options, space, name, client, parent_id)  # a storage that does not open fails here
    warm = start_study(options, space, name, study, study_identity(options, space, data, select_on)) \
        if study and parent_id is None else None
    num_samples, scheduler = options.num_samples or space.search.num_samples, resolve_scheduler(options.scheduler, space)
    sampler = resolve_sampler(options.sampler or space.search.sampler, scheduler, num_samples,
                              space.search.multi_objective, space.search.startup_trials)
    return SearchPlan(options, space, data, name, experiment_id, num_samples, scheduler, sampler,
                      time_budget_s(options, space), study, select_on, prepare_segmenter(space, data, options.data),
                      parent_id, warm)


def start_study(options: SearchOptions, space: Space, name: str, url: str, identity: dict):
    """The new search's study, created with what its trials see, and seeded (--warm-start) with the compatible
    trials of earlier studies in the same storage. Returns the WarmStart record, or None without --warm-start."""
    from tune_ct.track.study import create_search_study
    from tune_ct.track.warm_start import FIXED_ATTR, warm_start

    fixed = {k: v for k, v in space.params.items() if not isinstance(v, dict)}
    create_search_study(url, name, space.objectives, {**identity, FIXED_ATTR: fixed})
    if not options.warm_start:
        return None
    from ray.tune.search.optuna import OptunaSearch

    warm = warm_start(url, name, options.warm_start, identity, OptunaSearch.convert_search_space(space.tune_space()),
                      fixed)
    log.info(f"warm start: {warm.imported} trial(s) from {', '.join(warm.studies) or 'no study'}, {warm.skipped} "
             f"skipped (outside this space), {len(warm.refused)} stud(ies) refused")
    return warm


def study_identity(options: SearchOptions, space: Space, data: Prepared, select_on: SelectOn | None) -> dict:
    """What the trials of a search saw and were scored on, recorded on its Optuna study: two studies with the
    same identity searched the same data for the same metric. The seed counts only where it drew the
    --limit-per-class sample: on the whole set, searches with other seeds saw the same films."""
    limit = options.data.limit_per_class
    return {"tune_ct.manifest_hash": data.manifest.hash, "tune_ct.limit_per_class": limit,
            "tune_ct.seed": options.data.seed if limit else None, "tune_ct.objectives": [list(o) for o in space.objectives],
            "tune_ct.select_on_hash": select_on.films.content_hash if select_on else None,
            "tune_ct.held_out": sorted(data.held_out)}


def prepare_data(settings: DataSettings) -> Prepared:
    data = prepare(settings)
    if data.report.test_missing or data.report.test_changed:
        log.warning("WARNING: locked test split changed; see above")
    return data


def resolve_scheduler(asked: str | None, space: Space) -> str:
    """ASHA unless told otherwise; a multi-objective search runs every trial to its last epoch, since ASHA stops
    trials by their rank on one metric and would drop the fast, slightly weaker models a Pareto front is for."""
    if not space.search.multi_objective:
        return asked or "asha"
    if asked == "asha":
        raise SpaceError(f"{space.path}: search.objectives makes this a multi-objective search, which runs without "
                         "ASHA (it ranks trials on one metric); drop --scheduler asha, or give search.metric instead")
    return "none"


def time_budget_s(options: SearchOptions, space: Space) -> float | None:
    return parse_duration(options.time_budget) if options.time_budget else space.search.time_budget_s


def name_and_parent(options: SearchOptions, client, experiment_id: str) -> tuple[str, str | None]:
    """A new search's name; on --resume the search's own name (default: the newest) and its parent run."""
    if not options.resume:
        return options.name or f"search-{time.strftime('%Y%m%d-%H%M%S')}", None
    from ray import tune

    from tune_ct.train.resume import ResumeError, find_parent_run, latest_search, read_record

    name = options.name or latest_search(options.storage)
    if not tune.Tuner.can_restore(f"{options.storage}/{name}"):
        raise ResumeError(f"--resume: {options.storage}/{name} holds no Tune experiment to restore")
    record = read_record(options.storage, name)
    parent_id = record.parent_run_id if record else find_parent_run(client, experiment_id, name)
    if parent_id is None:
        raise ResumeError(f"--resume: no MLflow parent run for {name} in experiment {options.experiment!r} "
                          f"at {options.tracking_uri}: pass the --tracking-uri and --experiment the search ran with")
    return name, parent_id


def plan_study(options: SearchOptions, space: Space, name: str, client, parent_id: str | None) -> str | None:
    """The TPE searcher's study on disk: a new search checks its storage opens and holds no study of that name;
    a resumed one continues the study its parent run names (the restored searcher writes there)."""
    from tune_ct.track.parent_run import recorded_tag
    from tune_ct.track.study import StudyError, check_study
    from tune_ct.train.tuner import uses_study

    url = options.optuna_storage
    if not url or not uses_study(space):
        return None
    if parent_id is not None:
        recorded = recorded_tag(client, parent_id, tags.OPTUNA_STORAGE)
        if recorded is None:  # a search from before studies were kept on disk: its searcher's is in memory
            return None
        if options.optuna_storage_given and recorded != url:
            raise StudyError(f"--optuna-storage {url}: search {name} keeps its Optuna study in {recorded}; "
                             "resume without --optuna-storage (or with that URL)")
        url = recorded
    check_study(url, name, options.resume)
    return url


def prepare_selection(options: SearchOptions, space: Space) -> SelectOn | None:
    """--select-on: read and hash the films once, and write their file list; every trial caches and scores it."""
    if not options.select_on:
        return None
    from tune_ct.data.external_set import load_external
    from tune_ct.data.subsets import write_subset
    from tune_ct.search.console import announce_selection

    films = load_external(options.select_on, options.select_on_labels)
    if films.unreadable:
        log.warning(f"--select-on {films.root}: {len(films.unreadable)} unreadable file(s) left out, e.g. "
                    + ", ".join(f"{u.file} ({u.reason})" for u in films.unreadable[:5]))
    subset = options.data.work.subset(f"select-on-{films.content_hash}")
    write_subset(subset, films.root, films.entries, films.content_hash)
    announce_selection(films, space.metric)
    return SelectOn(films, subset, options.select_on_labels)


def check_selection_apart(films: ExternalSet, data: Prepared) -> None:
    """The select-on films share none with the films trials train on, nor with the held-out origins (a set is
    trained on, selected on or reported on, never two of these)."""
    from tune_ct.data.files import DataError

    chosen = {e.sha for e in films.entries}
    trained = [e for e in data.trainval_entries if e.sha in chosen]
    held = [e for e in data.manifest.entries if e.origin in data.held_out and e.sha in chosen]
    for shared, role, fix in ((trained, "trained on", "leave that collection or origin out of --data, or hold it "
                               "out with --holdout-origin and select on another"),
                              (held, "held out (--holdout-origin) to be reported on", "select on other films")):
        if shared:
            origins = ", ".join(sorted({e.origin for e in shared}))
            raise DataError(f"--select-on {films.root}: {len(shared)} of its films are {role} (origin(s) {origins}, "
                            f"e.g. {shared[0].key}): {fix}")


def prepare_segmenter(space: Space, data: Prepared, settings: DataSettings) -> Segmenter | None:
    """The dataset's lung segmenter, trained once from its masks (cached), when the space can crop to the lungs."""
    if True not in space.finite_values("lung_crop"):
        return None
    from tune_ct.train.segmenter import ensure_segmenter

    return Segmenter(*ensure_segmenter(data, settings.work, settings.seed))
