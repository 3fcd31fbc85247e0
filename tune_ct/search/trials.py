"""The trials of a search: the MLflow parent run opened (or reopened on --resume), every image cache a trial can
ask for built once, then the Tuner built (tune_ct.train.tuner) and run with the trial tracker and the live table."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import product

from tune_ct.search.plan import SearchPlan
from tune_ct.track import tags
from tune_ct.train.settings import TrialSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParentRun:
    run_id: str
    inputs: tuple  # the train and val splits as MLflow dataset inputs (tune_ct.track.datasets.SplitInput)
    selection: object | None = None  # the --select-on films as a dataset input (SplitInput)

    def dataset(self, split: str):
        """The DatasetRef metrics measured on `split` (train, val, select_on) are tied to."""
        from tune_ct.track.logged_models import DatasetRef

        found = [i for i in (*self.inputs, self.selection) if i is not None and i.split == split]
        return DatasetRef(found[0].name, found[0].digest) if found else None


@dataclass
class TrialsRun:
    """What the Tuner handed back, and the tracker that logged the trials (child runs, what reached MLflow)."""

    results: list  # Tune's Result per trial
    tracker: object  # tune_ct.track.tracker.TrialTracker


def open_parent_run(plan: SearchPlan, client) -> ParentRun:
    """A new parent run with what defines the search, or the resumed search's own one reopened."""
    from tune_ct.search.console import announce_resume
    from tune_ct.track.datasets import selection_input, trainval_inputs
    from tune_ct.track.parent_run import create_parent_run, reopen_parent_run
    from tune_ct.train.resume import SearchRecord, write_record

    inputs = trainval_inputs(plan.data, plan.options.data.limit_per_class)
    selection = (selection_input(plan.select_on.films),) if plan.select_on else ()
    if plan.resumed_parent_id:
        reopen_parent_run(client, plan.resumed_parent_id)
        announce_resume(plan)
        return ParentRun(plan.resumed_parent_id, inputs, selection[0] if selection else None)
    run_id = create_parent_run(client, plan.experiment_id, plan.name, parent_tags(plan), parent_params(plan),
                               inputs + selection, (str(plan.space.path),))
    write_record(plan.options.storage, SearchRecord(plan.name, run_id, plan.experiment_id, plan.options.experiment,
                                                    str(plan.space.path), plan.num_samples))
    return ParentRun(run_id, inputs, selection[0] if selection else None)


def parent_tags(plan: SearchPlan) -> dict[str, str]:
    study = {tags.OPTUNA_STORAGE: plan.study_storage, tags.OPTUNA_STUDY: plan.name} if plan.study_storage else {}
    from tune_ct.track.runs import code_version

    out = {**study, tags.SPACE_FILE: str(plan.space.path), tags.MANIFEST_HASH: plan.data.manifest.hash,
           tags.CODE_VERSION: code_version(), tags.DATA: str(plan.data.root),
           tags.LIMIT_PER_CLASS: str(plan.options.data.limit_per_class or "none")}
    if plan.select_on is not None:  # evaluate --external refuses these films for a final figure
        ext = plan.select_on.films
        out.update({tags.SELECT_ON + key: str(value) for key, value in {
            "dir": ext.root, "name": ext.name, "hash": ext.content_hash, "n": len(ext.entries),
            "classes": ",".join(ext.classes_present), "unreadable": len(ext.unreadable),
            "labels_csv": plan.select_on.labels_csv or ""}.items()})
    return out


def parent_params(plan: SearchPlan) -> dict[str, object]:
    from tune_ct.search.console import describe_pick

    options, space, search = plan.options, plan.space, plan.space.search
    return {
        "num_samples": plan.num_samples, "max_concurrent": plan.max_concurrent, "seed": options.data.seed,
        "metric": space.metric, "grace_period": search.grace_period, "reduction_factor": search.reduction_factor,
        "workers_per_trial": search.workers_per_trial, "gpus_per_worker": plan.gpus_per_worker,
        "n_trainval_images": len(plan.data.trainval_entries), "storage": options.storage,
        "sampler": plan.sampler.kind, "sampler_startup_trials": plan.sampler.n_startup_trials,
        "sampler_why": plan.sampler.why,
        "warm_start": (f"{plan.warm_start.imported} trials from {','.join(plan.warm_start.studies) or 'none'} "
                       f"({plan.warm_start.skipped} skipped)") if plan.warm_start else "none",
        "scheduler": {"asha": "ASHA", "none": "none"}[plan.scheduler],
        "objectives": ",".join(f"{n}:{m}" for n, m in space.objectives),
        "pick": describe_pick(search.pick) if search.multi_objective else "best on the metric",
        "pretrained": pretrained_description(options.weights, space),
    }


def pretrained_description(weights: dict[str, str], space) -> str:
    hub = "timm pretrained weights (Hugging Face hub) where pretrained: true" if True in space.finite_values(
        "pretrained") else ""
    return "; ".join(filter(None, (",".join(f"{b}={f}" for b, f in weights.items()), hub))) or "none (from scratch)"


def build_caches(plan: SearchPlan) -> None:
    """Every cache a trial can ask for (image size x preprocessing, train/val and --select-on films) once, here,
    so concurrent trials do not wait on each other's build."""
    from tune_ct.data.cache import open_or_build
    from tune_ct.model.preprocess import Preprocessing, per_film

    space = plan.space
    segmenter = plan.segmenter.path if plan.segmenter else None
    subsets = [plan.data.trainval_path] + ([plan.select_on.subset] if plan.select_on else [])
    for size, equalize, crop in product(space.finite_values("image_size"), space.finite_values("equalize"),
                                        space.finite_values("lung_crop")):
        films = per_film(Preprocessing.chosen(equalize, crop, segmenter))
        for subset in subsets:
            cache = open_or_build(subset, int(size), plan.work.cache, per_film=films)
            stats = json.loads((cache.path / "index.json").read_text()).get("per_film") or {}
            if stats.get("lung_crop_fallbacks"):
                log.warning(f"lung crop: no lungs found in {stats['lung_crop_fallbacks']} of {stats['films']} "
                            f"film(s) of {subset.name}; those films are used whole")


def trial_settings(plan: SearchPlan) -> TrialSettings:
    search = plan.space.search
    return TrialSettings(
        subset_path=str(plan.data.trainval_path), cache_root=str(plan.work.cache),
        storage_path=plan.options.storage, experiment=plan.name, seed=plan.options.data.seed,
        workers_per_trial=search.workers_per_trial, cpus_per_worker=float(search.cpus_per_worker),
        gpus_per_worker=float(plan.gpus_per_worker), metric=plan.space.metric, mode=plan.space.mode,
        weights=plan.options.weights, measure_speed="cpu_ms_per_film" in dict(plan.space.objectives),
        ext_subset_path=str(plan.select_on.subset) if plan.select_on else None,
        segmenter_path=str(plan.segmenter.path) if plan.segmenter else None,
    )


def disk_full_error(plan: SearchPlan, detail: str, where: str = "storage", client=None):
    """The search stops: which disk is full, and what to do."""
    from tune_ct.data.cache import DiskFullError

    resume = f"then finish the search with --resume --name {plan.name}"
    if where == "artifacts":
        store = client.get_experiment(plan.experiment_id).artifact_location if client else "the artifact store"
        return DiskFullError(
            f"MLflow could not store a trial's records: {detail}. The MLflow artifact store ({store}) is full: free "
            f"space there (or give the experiment, or the tracking server, a larger artifact store), {resume}")
    return DiskFullError(
        f"a trial could not write its checkpoint: {detail}. Checkpoints go to the Tune storage "
        f"({plan.options.storage}; --storage) through the trial's temporary folder ($TMPDIR); free space on the "
        f"full one (`python -m tune_ct.clean` lists what tune_ct keeps) or point --storage at a larger disk, {resume}")


def run_trials(plan: SearchPlan, parent: ParentRun, handlers) -> TrialsRun:
    """Build the Tuner (new, or restored on --resume with its own restored tracker) and run every trial. A stop
    signal during the trials lets Tune stop at its next step and write its experiment snapshot, then raises
    Stopped (tune_ct.train.stop_signals)."""
    from tune_ct.train.stop_signals import Stopped

    from tune_ct.track.system import start_sink
    from tune_ct.train.memory_kills import KillBook
    from tune_ct.track.tracker import TrialTracker
    from tune_ct.track.trial_table import TrialTable
    from tune_ct.train.tuner import TunePlan, new_tuner, restored_callback, restored_tuner, trainable

    options, space = plan.options, plan.space
    tune_plan = TunePlan(plan.name, options.storage, plan.num_samples, plan.max_concurrent, plan.sampler,
                         plan.scheduler, options.data.seed, space.search.resolved_runner, plan.time_budget_s,
                         study_storage=plan.study_storage, verbose=options.verbose, objectives=space.objectives)
    tracker = TrialTracker(options.tracking_uri, plan.experiment_id, parent.run_id, space.max_epochs,
                           time_budget_s=plan.time_budget_s, inputs=parent.inputs, system_metrics_of=plan.name,
                           storage_path=options.storage)
    sink = start_sink(plan.name)  # the trials' system samples wait there until the tracker logs them
    book = KillBook(options.storage, plan.name)  # which actor runs which trial, and the trials killed for memory
    fn = trainable(trial_settings(plan), tune_plan.runner, sampled_as=plan.name)
    if options.resume:
        tuner = restored_tuner(fn, tune_plan)
        tracker = restored_callback(tuner, TrialTracker, tracker)
    else:
        table = TrialTable(space.metric, space.mode, space.max_epochs, plan.time_budget_s)
        tuner = new_tuner(fn, space, tune_plan, [tracker, table])
    while (results := fit(plan, tuner, tracker, handlers, book)) is None:
        # Ray killed a trial for memory and Tune stopped: go on from Tune's snapshot; errored trials stay so. The
        # monitor may have killed the sink too: a new one takes the samples from here on.
        sink = start_sink(plan.name)
        tuner = restored_tuner(fn, tune_plan, resume_errored=False)
        tracker = restored_callback(tuner, TrialTracker, tracker)
    del sink  # held until here: Ray ends an actor no handle refers to
    if handlers.requested is not None:
        raise Stopped(handlers.requested)
    return TrialsRun(results, tracker)


def fit(plan: SearchPlan, tuner, tracker, handlers, book) -> list | None:
    """Every trial's result; None when Ray's memory monitor killed trials (counted in `book`) and stopped Tune."""
    from tune_ct.train.memory_kills import memory_kill, record_kill
    from tune_ct.train.resources import ClusterError

    with handlers.graceful(tracker.interrupt):
        try:
            return list(tuner.fit())
        except Exception as exc:
            if tracker.disk_full:  # raised by the tracker: say which disk and what to do, not Tune's traceback
                raise disk_full_error(plan, tracker.disk_full, tracker.disk_full_where, tracker.client) from None
            killed = memory_kill(exc)
            if killed is None or handlers.requested is not None:
                raise
            victims = record_kill(book, killed)
            if not victims:
                raise ClusterError(f"Ray's memory monitor killed a process of the search that runs no trial "
                                   f"({str(killed).strip().splitlines()[0][:300]}); give the node more memory or run "
                                   f"fewer trials at once, then finish the search with --resume --name "
                                   f"{plan.name}") from None
    log.warning(f"Ray's memory monitor killed trial(s) {', '.join(victims)}: {str(killed).splitlines()[0][:200]}; "
                f"the search goes on from its last snapshot (a trial killed more than once ends ERROR)")
    return None
