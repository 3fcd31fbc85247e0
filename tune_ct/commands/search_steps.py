"""The steps of a search, in the order they run; `run_search` reads as the list of them.

Checks come first (space, tracking server, data, Ray cluster), so a mistake costs seconds, not a night of GPUs.
The test split is touched once, at the end, by the best checkpoint alone.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tune_ct.data.files import CLASSES
from tune_ct.data.prepare import DataSettings, Prepared, prepare
from tune_ct.registry.models import DEFAULT_REGISTER_NAME
from tune_ct.track.server import check_tracking_uri
from tune_ct.track.uri import is_remote
from tune_ct.train.resume import EXPERIMENT_TAG, ResumeError, SearchRecord, find_parent_run, latest_search, read_record, write_record
from tune_ct.train.space import EXTERNAL_METRICS, Space, SpaceError, load_space
from tune_ct.train.settings import RunSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOptions:
    """Everything a search is told, parsed once from the command line."""

    space: Path
    data: DataSettings
    tracking_uri: str
    storage: str
    experiment: str = "tune_ct"
    name: str | None = None
    resume: bool = False
    num_samples: int | None = None
    max_concurrent: int | None = None
    searcher: str = "tpe"
    scheduler: str | None = None  # asha | none; None: asha, or none for a multi-objective space
    weights: dict[str, str] = field(default_factory=dict)
    register_name: str = DEFAULT_REGISTER_NAME
    address: str | None = None
    summary: Path | None = None
    select_on: Path | None = None  # labelled films from other sources: scored every epoch, never trained on
    select_on_labels: Path | None = None
    time_budget: str | None = None  # overrides the space's search.time_budget
    argv: tuple[str, ...] = ()  # the command line, for the exact --resume command after an interruption
    verbose: bool = False  # Tune's own output, Ray Train and worker logs on the console too
    optuna_storage: str | None = None  # the TPE study's RDB URL (resolved); None: the study stays in memory
    optuna_storage_given: bool = False  # --optuna-storage was passed (a resumed search keeps its own otherwise)


@dataclass
class SearchRun:
    """What the steps of one search hand each other."""

    options: SearchOptions
    space: Space
    prep: Prepared
    client: object
    experiment_id: str
    run_name: str
    parent_id: str | None = None
    num_samples: int = 0
    max_concurrent: int = 1
    scheduler: str = "asha"  # resolved: asha, or none (asked for, or a multi-objective space)
    gpus_per_worker: float = 0.0
    started: float = field(default_factory=time.monotonic)
    select_on: object | None = None  # the ExternalSet of --select-on
    select_on_subset: Path | None = None
    segmenter: Path | None = None  # the lung segmenter, when the space can choose lung_crop: true
    segmenter_report: dict | None = None
    study_storage: str | None = None  # where the Optuna study (named run_name) is, when the searcher keeps one
    inputs: tuple = ()  # the train and val splits as MLflow dataset inputs (tune_ct.track.datasets.SplitInput)
    sink: object | None = None  # the SystemSink actor; held here, as Ray ends an actor no handle refers to
    front: object | None = None  # multi-objective: the Pareto front and its pick (tune_ct.train.pareto.Front)

    @property
    def cache_root(self) -> Path:
        return self.options.data.workdir / "cache"


def run_search(options: SearchOptions) -> dict:
    started = time.monotonic()
    space = load_space(options.space)  # every space mistake fails here, before any compute
    check_selection_metric(space, options)
    check_pretrained(space, options.weights)  # weights neither cached nor reachable fail here
    check_tracking(options.tracking_uri)  # a dead or credential-rejecting server fails here, before any compute
    prep = prepare_data(options.data)
    run = plan_run(options, space, prep, started)
    plan_study(run)  # an Optuna storage that does not open fails here
    prepare_selection(run)
    prepare_segmenter(run)
    import ray

    # "local" always starts a fresh Ray for this search; plain ray.init() would silently join any cluster that
    # `ray start` left running on this machine.
    # Tune's default output engine prints a configuration box even at verbose=0; its legacy engine at verbose=0
    # prints nothing, which leaves the console to the trial table (--verbose: the default engine, in full).
    if not options.verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # Ctrl-C stops the search here, as a KeyboardInterrupt, instead of Tune's handler returning the trials so far
    # as if the search had ended (which then tested and registered an epoch-1 checkpoint).
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    context = ray.init(**ray_init_args(options))
    try:
        announce(run, context)
        fit_to_cluster(run, context.dashboard_url, ray.cluster_resources())
        open_parent_run(run)
        build_caches(run)
        return search_and_publish(run)
    finally:
        ray.shutdown()


def ray_init_args(options: SearchOptions) -> dict:
    """What reaches the console from Ray: warnings and errors, the driver's INFO and the workers' output only
    with --verbose (they stay in Ray's session logs and, per trial, in its folder under the storage). The
    Hugging Face settings (HF_HOME, HF_HUB_OFFLINE) travel to every worker, also on a cluster's other nodes."""
    import logging

    args = {"address": options.address or "local", "log_to_driver": options.verbose,
            "logging_level": logging.INFO if options.verbose else logging.WARNING}
    hub_env = {k: v for k, v in os.environ.items() if k.startswith("HF_")}
    if hub_env:
        args["runtime_env"] = {"env_vars": hub_env}
    return args


def announce(run: SearchRun, context) -> None:
    """Where to watch the search from outside this console."""
    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    print(f"search {run.run_name}: Ray dashboard {context.dashboard_url or '(none)'}; trial and Ray Train logs "
          f"in {session or 'the Ray session'}/logs" + ("" if run.options.verbose else " (--verbose prints them here)"),
          flush=True)
    if run.study_storage:
        print(f"Optuna study {run.run_name} in {run.study_storage}: watch it with "
              f"`optuna-dashboard {run.study_storage}`", flush=True)


def search_and_publish(run: SearchRun) -> dict:
    """Run the trials, then test and register the best; the parent run ends FINISHED, FAILED or KILLED."""
    status = "FAILED"
    try:
        tracker, tuner = make_tuner(run)
        results = tuner.fit()
        if tracker.stopped_by_time_budget:  # the only trials Tune ends without telling the searcher
            settle_study(run, results)
        orphans = close_orphans(run, results)
        best = pick_best(run, results, tracker)
        summary = publish(run, tracker, best, results)
        summary["orphan_child_runs"] = orphans
        report_tracking(summary, tracker)
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        close_interrupted(run)
        raise
    finally:
        run.client.set_terminated(run.parent_id, status)


def close_interrupted(run: SearchRun) -> None:
    """Ctrl-C: the trials' runs are closed KILLED and the parent marked interrupted; nothing is tested or
    registered; the exact command that finishes the search is printed."""
    import shlex

    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    when = time.strftime("%Y-%m-%dT%H:%M:%S")
    children = run.client.search_runs([run.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run.parent_id}'")
    for child in (c for c in children if c.info.status == "RUNNING"):
        run.client.set_tag(child.info.run_id, "tune_ct.interrupted", when)
        run.client.set_terminated(child.info.run_id, "KILLED")
    run.client.set_tag(run.parent_id, "tune_ct.interrupted", when)
    argv = [a for a in run.options.argv if a != "--resume"]
    if "--name" not in argv:
        argv += ["--name", run.run_name]
    print(f"\nsearch interrupted: nothing was tested or registered. Finish it with:\n  python -m tune_ct.search "
          f"{shlex.join(argv)} --resume", flush=True)


def check_tracking(uri: str) -> None:
    check_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        # Fail a log call within ~15 s instead of MLflow's minutes of backoff: TrialTracker queues and retries it.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def check_pretrained(space: Space, weights: dict[str, str]) -> None:
    """Every backbone a trial may build with `pretrained: true` has its timm weights in the Hugging Face cache,
    fetched now when the hub is reachable (trials then load them from the cache); a --weights file wins."""
    if True not in space.finite_values("pretrained"):
        return
    from tune_ct.model.networks import pretrained_weights

    for backbone in space.finite_values("backbone"):
        if backbone not in weights:
            path = pretrained_weights(backbone)
            log.info(f"pretrained weights of {backbone}: {path or 'none in timm (trains from scratch)'}")


def plan_study(run: SearchRun) -> None:
    """The TPE searcher's study on disk: a new search checks its storage opens and holds no study of that name;
    a resumed one continues the study its parent run names (the restored searcher writes there)."""
    from tune_ct.track.study import STORAGE_TAG, StudyError, check_study
    from tune_ct.train.tuner import uses_study

    options = run.options
    if not options.optuna_storage or not uses_study(options.searcher, run.space):
        return
    url = options.optuna_storage
    if options.resume:
        recorded = run.client.get_run(run.parent_id).data.tags.get(STORAGE_TAG)
        if recorded is None:  # a search from before studies were kept on disk: its searcher's is in memory
            return
        if options.optuna_storage_given and recorded != url:
            raise StudyError(f"--optuna-storage {url}: search {run.run_name} keeps its Optuna study in {recorded}; "
                             "resume without --optuna-storage (or with that URL)")
        url = recorded
    check_study(url, run.run_name, options.resume)
    run.study_storage = url


def check_selection_metric(space: Space, options: SearchOptions) -> None:
    if space.metric in EXTERNAL_METRICS and not options.select_on:
        raise SpaceError(f"{space.path}: search.metric {space.metric} scores films from other sources: pass "
                         "--select-on DIR (a labelled folder, as for evaluate --external), or use val_macro_f1")


def prepare_selection(run: SearchRun) -> None:
    """--select-on: read and hash the films once, and write their file list; every trial caches and scores it."""
    if not run.options.select_on:
        return
    from tune_ct.data.external import load_external
    from tune_ct.data.subsets import write_subset

    ext = load_external(run.options.select_on, run.options.select_on_labels)
    if ext.unreadable:
        log.warning(f"--select-on {ext.root}: {len(ext.unreadable)} unreadable file(s) left out, e.g. "
                    + ", ".join(f"{u.file} ({u.reason})" for u in ext.unreadable[:5]))
    run.select_on = ext
    run.select_on_subset = run.options.data.workdir / "subsets" / f"select-on-{ext.content_hash}.json"
    write_subset(run.select_on_subset, ext.root, ext.entries, ext.content_hash)
    print(f"selecting on {ext.name} ({ext.root}): {len(ext.entries)} films, classes "
          f"{', '.join(ext.classes_present)}, content hash {ext.content_hash}; metric {run.space.metric}", flush=True)


def prepare_segmenter(run: SearchRun) -> None:
    """The dataset's lung segmenter, trained once from its masks (cached), when the space can crop to the lungs."""
    if True not in run.space.finite_values("lung_crop"):
        return
    from tune_ct.train.segmenter import ensure_segmenter

    run.segmenter, run.segmenter_report = ensure_segmenter(run.prep, run.options.data.workdir, run.options.data.seed)


def prepare_data(settings: DataSettings) -> Prepared:
    prep = prepare(settings)
    if prep.report.test_missing or prep.report.test_changed:
        log.warning("WARNING: locked test split changed; see above")
    return prep


def plan_run(options: SearchOptions, space: Space, prep: Prepared, started: float) -> SearchRun:
    """The MLflow experiment, the Tune experiment's name and, on --resume, the parent run to continue."""
    from tune_ct.track.runs import ensure_experiment
    from tune_ct.track.uri import connect

    client = connect(options.tracking_uri)
    local_artifacts = None if is_remote(options.tracking_uri) else Path("mlartifacts")
    experiment_id = ensure_experiment(client, options.experiment, local_artifacts)
    run = SearchRun(options, space, prep, client, experiment_id,
                    options.name or f"search-{time.strftime('%Y%m%d-%H%M%S')}", started=started)
    run.num_samples = options.num_samples or space.search.num_samples
    run.scheduler = resolve_scheduler(options.scheduler, space)
    if options.resume:
        find_resumed_parent(run)
    return run


def resolve_scheduler(asked: str | None, space: Space) -> str:
    """ASHA unless told otherwise; a multi-objective search runs every trial to its last epoch, since ASHA stops
    trials by their rank on one metric and would drop the fast, slightly weaker models a Pareto front is for."""
    if not space.search.multi_objective:
        return asked or "asha"
    if asked == "asha":
        raise SpaceError(f"{space.path}: search.objectives makes this a multi-objective search, which runs without "
                         "ASHA (it ranks trials on one metric); drop --scheduler asha, or give search.metric instead")
    return "none"


def find_resumed_parent(run: SearchRun) -> None:
    from ray import tune

    options = run.options
    run.run_name = options.name or latest_search(options.storage)
    if not tune.Tuner.can_restore(f"{options.storage}/{run.run_name}"):
        raise ResumeError(f"--resume: {options.storage}/{run.run_name} holds no Tune experiment to restore")
    record = read_record(options.storage, run.run_name)
    run.parent_id = record.parent_run_id if record else find_parent_run(run.client, run.experiment_id, run.run_name)
    if run.parent_id is None:
        raise ResumeError(f"--resume: no MLflow parent run for {run.run_name} in experiment {options.experiment!r} "
                          f"at {options.tracking_uri}: pass the --tracking-uri and --experiment the search ran with")


def fit_to_cluster(run: SearchRun, dashboard_url: str | None, resources: dict[str, float]) -> None:
    from tune_ct.train.resources import check_dashboard, check_resources

    check_dashboard(dashboard_url, run.options.address)
    run.gpus_per_worker, run.max_concurrent = check_resources(
        run.space.search, run.options.max_concurrent or run.space.search.max_concurrent, resources,
        str(run.space.path))


def open_parent_run(run: SearchRun) -> None:
    """A new parent run with what defines the search, or the resumed search's own one reopened."""
    client = run.client
    if run.options.resume:
        client.update_run(run.parent_id, status="RUNNING")
        client.set_tag(run.parent_id, "tune_ct.resumed", time.strftime("%Y-%m-%dT%H:%M:%S"))
        print(f"resuming {run.options.storage}/{run.run_name}: MLflow parent run {run.parent_id}", flush=True)
        return
    run.parent_id = start_parent_run(run)
    write_record(run.options.storage, SearchRecord(run.run_name, run.parent_id, run.experiment_id,
                                                   run.options.experiment, str(run.space.path), run.num_samples))


def start_parent_run(run: SearchRun) -> str:
    from mlflow.entities import Param

    from tune_ct.track.runs import code_version

    options, space, prep = run.options, run.space, run.prep
    from tune_ct.track.datasets import log_inputs, trainval_inputs
    from tune_ct.track.study import STORAGE_TAG, STUDY_TAG

    study = {STORAGE_TAG: run.study_storage, STUDY_TAG: run.run_name} if run.study_storage else {}
    parent = run.client.create_run(run.experiment_id, run_name=run.run_name, tags={
        EXPERIMENT_TAG: run.run_name, **study,
        "tune_ct.space_file": str(space.path), "tune_ct.manifest_hash": prep.manifest.hash,
        "tune_ct.code_version": code_version(), "tune_ct.data": str(prep.root),
        "tune_ct.limit_per_class": str(options.data.limit_per_class or "none"),
        "tune_ct.role": "search",
    })
    parent_id = parent.info.run_id
    run.client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in {
        "num_samples": run.num_samples, "max_concurrent": run.max_concurrent, "seed": options.data.seed,
        "metric": space.metric, "grace_period": space.search.grace_period,
        "reduction_factor": space.search.reduction_factor, "workers_per_trial": space.search.workers_per_trial,
        "gpus_per_worker": run.gpus_per_worker, "n_trainval_images": len(prep.trainval_entries),
        "storage": options.storage,
        "sampler": {"tpe": "optuna.TPESampler", "random": "random"}[options.searcher],
        "scheduler": {"asha": "ASHA", "none": "none"}[run.scheduler],
        "objectives": ",".join(f"{n}:{m}" for n, m in space.objectives),
        "pick": describe_pick(space.search.pick) if space.search.multi_objective else "best on the metric",
        "pretrained": pretrained_description(options.weights, space),
    }.items()])
    run.inputs = trainval_inputs(prep, options.data.limit_per_class)
    log_inputs(run.client, parent_id, run.inputs)
    run.client.log_artifact(parent_id, str(space.path))
    log_selection_and_segmenter(run, parent_id)
    return parent_id


def pretrained_description(weights: dict[str, str], space: Space) -> str:
    hub = "timm pretrained weights (Hugging Face hub) where pretrained: true" if True in space.finite_values(
        "pretrained") else ""
    return "; ".join(filter(None, (",".join(f"{b}={f}" for b, f in weights.items()), hub))) or "none (from scratch)"


def log_selection_and_segmenter(run: SearchRun, parent_id: str) -> None:
    """The films selected on (so evaluate --external can refuse them for the final figure) and the segmenter."""
    from tune_ct.track.runs import log_json

    ext = run.select_on
    if ext is not None:
        for key, value in {"dir": str(ext.root), "name": ext.name, "hash": ext.content_hash, "n": len(ext.entries),
                           "classes": ",".join(ext.classes_present), "unreadable": len(ext.unreadable),
                           "labels_csv": str(run.options.select_on_labels or "")}.items():
            run.client.set_tag(parent_id, f"tune_ct.select_on.{key}", str(value))
    if run.segmenter_report is not None:
        run.client.log_metric(parent_id, "lung_segmenter_dice_heldout", float(run.segmenter_report["dice_heldout"]))
        log_json(run.client, parent_id, {**run.segmenter_report, "file": str(run.segmenter)}, "lung_segmenter.json")


def build_caches(run: SearchRun) -> None:
    """Every cache a trial can ask for (image size x preprocessing, train/val and --select-on films) once, here,
    so concurrent trials do not wait on each other's build."""
    from itertools import product

    from tune_ct.data.cache import open_or_build
    from tune_ct.model.preprocess import Preprocessing, per_film

    space = run.space
    for size, equalize, crop in product(space.finite_values("image_size"), space.finite_values("equalize"),
                                        space.finite_values("lung_crop")):
        films = per_film(Preprocessing.from_hp({"equalize": equalize, "lung_crop": crop}, run.segmenter))
        for subset in filter(None, (run.prep.trainval_path, run.select_on_subset)):
            cache = open_or_build(subset, int(size), run.cache_root, per_film=films)
            stats = json.loads((cache.path / "index.json").read_text()).get("per_film") or {}
            if stats.get("lung_crop_fallbacks"):
                log.warning(f"lung crop: no lungs found in {stats['lung_crop_fallbacks']} of {stats['films']} "
                            f"film(s) of {subset.name}; those films are used whole")


def run_settings(run: SearchRun) -> RunSettings:
    search = run.space.search
    return RunSettings(
        subset_path=str(run.prep.trainval_path), cache_root=str(run.cache_root), storage_path=run.options.storage,
        experiment=run.run_name, seed=run.options.data.seed, workers_per_trial=search.workers_per_trial,
        cpus_per_worker=float(search.cpus_per_worker), gpus_per_worker=float(run.gpus_per_worker),
        metric=run.space.metric, mode=run.space.mode, weights=run.options.weights,
        measure_speed="cpu_ms_per_film" in dict(run.space.objectives),
        ext_subset_path=str(run.select_on_subset) if run.select_on_subset else None,
        segmenter_path=str(run.segmenter) if run.segmenter else None,
    )


def make_tuner(run: SearchRun):
    """The trial tracker and a new Tuner, or on --resume the restored Tuner with its own restored tracker."""
    from tune_ct.track.console import TrialTable
    from tune_ct.track.system import start_sink
    from tune_ct.track.tracker import TrialTracker
    from tune_ct.train.tuner import TunePlan, new_tuner, restored_callback, restored_tuner, trainable

    options, search, space = run.options, run.space.search, run.space
    plan = TunePlan(run.run_name, options.storage, run.num_samples, run.max_concurrent, options.searcher,
                    run.scheduler, options.data.seed, search.resolved_runner, time_budget_s(run),
                    study_storage=run.study_storage, verbose=options.verbose, objectives=space.objectives)
    tracker = TrialTracker(options.tracking_uri, run.experiment_id, run.parent_id, space.max_epochs,
                           time_budget_s=plan.time_budget_s, inputs=run.inputs, system_metrics_of=run.run_name)
    run.sink = start_sink(run.run_name)  # the trials' system metrics wait there until the tracker logs them
    fn = trainable(run_settings(run), plan.runner, sampled_as=run.run_name)
    if options.resume:
        tuner = restored_tuner(fn, plan)
        return restored_callback(tuner, TrialTracker, tracker), tuner
    table = TrialTable(space.metric, space.mode, space.max_epochs, plan.time_budget_s)
    return tracker, new_tuner(fn, space, plan, [tracker, table])


def close_orphans(run: SearchRun, results) -> list[str]:
    from tune_ct.track.tracker import close_orphan_runs

    try:
        orphans = close_orphan_runs(run.client, run.experiment_id, run.parent_id,
                                    {str(r.metrics.get("trial_id")) for r in results if r.metrics})
    except Exception as exc:  # noqa: BLE001 - a tracking server down at the end must not lose the search
        log.warning(f"WARNING: could not look for orphaned child runs: {exc}")
        return []
    if orphans:
        print(f"closed {len(orphans)} child run(s) of trials started as the driver died (KILLED, tagged "
              f"tune_ct.orphan): {', '.join(orphans)}", flush=True)
    return orphans


def settle_study(run: SearchRun, results) -> None:
    """Optuna trials still RUNNING after the search (Tune stopped them at the time budget without telling the
    searcher) are told what their Tune trials reported: the last value, or for a multi-objective study the values
    at the best epoch on the first objective, as StudySearch tells them."""
    import math

    from tune_ct.track.study import finish_running, load_study

    study = load_study(run.study_storage, run.run_name) if run.study_storage else None
    if study is None:
        return
    names, mode = [n for n, _ in run.space.objectives], run.space.mode
    ended = []
    for result in results:
        df = result.metrics_dataframe
        values = None
        if df is not None and not df.empty and all(n in df for n in names):
            row = df.loc[df[names[0]].idxmax() if mode == "max" else df[names[0]].idxmin()] if len(names) > 1 \
                else df.iloc[-1]
            values = [float(row[n]) for n in names]
            values = None if not all(math.isfinite(v) for v in values) else values if len(names) > 1 else values[0]
        ended.append((result.config, values))
    told = finish_running(study, ended)
    if told:
        log.info(f"Optuna study {run.run_name}: trial(s) {told} stopped by the time budget, told their values so far")


def time_budget_s(run: SearchRun) -> float | None:
    from tune_ct.train.space import parse_duration

    return parse_duration(run.options.time_budget) if run.options.time_budget else run.space.search.time_budget_s


def epochs_with_checkpoints(df, kept: dict[int, str]):
    """A trial's per-epoch results with a checkpoint_path column: the train runner reports it as a metric, the
    actor runner's checkpoints are Tune's own (`kept`: epoch -> path of those its CheckpointConfig kept)."""
    if df is None or "checkpoint_path" in df or not kept:
        return df
    return df.assign(checkpoint_path=df["epoch"].map(kept))


def pick_best(run: SearchRun, results, tracker):
    from tune_ct.train.best import best_trial
    from tune_ct.train.storage import checkpoint_exists, storage_filesystem

    filesystem = storage_filesystem(run.options.storage)
    trials = [(r.config, epochs_with_checkpoints(r.metrics_dataframe, {int(m["epoch"]): c.path for c, m in
                                                                        r.best_checkpoints or []})) for r in results]
    def exists(path: str) -> bool:
        return checkpoint_exists(filesystem, path)

    if run.space.search.multi_objective:
        from tune_ct.train.pareto import search_front

        run.front = search_front(trials, run.space.objectives, run.space.search.pick, exists, tracker.runs)
        return run.front.picked.best
    return best_trial(trials, run.space.metric, run.space.mode, exists, tracker.runs)


def publish(run: SearchRun, tracker, best, results) -> dict:
    """Evaluate the best checkpoint once on the locked test split; log, register and print everything."""
    from tune_ct.evaluate.evaluation import evaluate_model, write_test_subset
    from tune_ct.model.checkpoint import load_checkpoint_model
    from tune_ct.model.preprocess import Preprocessing
    from tune_ct.registry.publish import BestModel, publish_best
    from tune_ct.track.runs import log_json
    from tune_ct.train.storage import fetch_checkpoint, storage_filesystem

    data = run.options.data
    folder = fetch_checkpoint(storage_filesystem(run.options.storage), best.checkpoint_path, data.workdir)
    model, saved = load_checkpoint_model(folder)
    test_subset = write_test_subset(run.prep.manifest, run.prep.root, data.workdir, data.limit_per_class, data.seed)
    evaluation = evaluate_model(model, int(saved["image_size"]), test_subset, run.cache_root,
                                preprocessing=Preprocessing.from_saved(saved))
    published = publish_best(run.client, run.parent_id, BestModel(model, saved, evaluation, test_subset,
                                                                  run.cache_root), run.prep,
                             run.options.register_name, seed=data.seed)
    log_best(run, best, evaluation)
    summary = summarize(run, tracker, best, evaluation, results, published)
    log_front(run, summary)
    log_test_input(run, evaluation)
    log_study_plots(run)
    describe(run, summary)
    log_json(run.client, run.parent_id, summary, "summary.json")
    print_result(best, evaluation, summary)
    if run.front is not None:
        print_front(summary, describe_pick(run.space.search.pick))
    return summary


def log_test_input(run: SearchRun, evaluation) -> None:
    """The test split as the parent run's third dataset input, once it has been used (by the winner alone)."""
    from tune_ct.track.datasets import log_inputs, split_input

    labels = [CLASSES[int(i)] for i in evaluation.y_true]
    log_inputs(run.client, run.parent_id, [split_input(run.prep, "test", labels, run.options.data.limit_per_class)])


def log_study_plots(run: SearchRun) -> None:
    """Optuna's history, importance and parallel-coordinate plots of the finished study, under optuna/."""
    from tune_ct.track.study import load_study, study_plots

    study = load_study(run.study_storage, run.run_name) if run.study_storage else None
    if study is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        if study_plots(study, Path(tmp), ("optuna_history.png", "optuna_importances.png",
                                          "optuna_parallel_coordinate.png", "optuna_pareto_front.png")):
            run.client.log_artifacts(run.parent_id, tmp, "optuna")


def describe(run: SearchRun, summary: dict) -> None:
    """What MLflow's UI shows first: the parent run's description and the registered version's."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    from tune_ct.track.notes import search_note, version_note

    run.client.set_tag(run.parent_id, MLFLOW_RUN_NOTE, search_note(summary, run.run_name, run.options.tracking_uri))
    if summary.get("registered_version") is not None:
        run.client.update_model_version(summary["registered_model"], str(summary["registered_version"]),
                                        description=version_note(summary, run.run_name))


def log_best(run: SearchRun, best, evaluation) -> None:
    """The winner's val and test figures, which trial and epoch it was, and the test confusion matrix."""
    from mlflow.entities import Metric, RunTag

    from tune_ct.track.figures import plot_confusion_matrix

    test = evaluation.headline()
    now = int(time.time() * 1000)
    metrics = {f"best_val_{k[4:]}": float(v) for k, v in best.val_metrics.items()
               if k.startswith("val_") and isinstance(v, (int, float))}
    metrics.update({k: float(v) for k, v in evaluation.metrics.items() if not k.endswith("confusion_matrix")})
    metrics.update({f"best_{k}": float(v) for k, v in (best.costs or {}).items()})
    metrics["test_majority_class_macro_f1"] = test["majority_class_macro_f1"]
    run.client.log_batch(run.parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()], tags=[
        RunTag("tune_ct.best_trial_id", best.trial_id), RunTag("tune_ct.best_run_id", best.run_id or ""),
        RunTag("tune_ct.best_checkpoint", best.checkpoint_path), RunTag("tune_ct.best_epoch", str(best.epoch)),
    ])
    with tempfile.TemporaryDirectory() as tmp:
        plot_confusion_matrix(test["confusion_matrix"], Path(tmp) / "test_confusion_matrix.png",
                              f"locked test split (n={test['n']}), best trial {best.trial_id}")
        run.client.log_artifacts(run.parent_id, tmp)


def summarize(run: SearchRun, tracker, best, evaluation, results, published: dict) -> dict:
    from tune_ct.train.pareto import front_summary

    trials = list(results)
    return {
        "best_trial_id": best.trial_id,
        "best_config": best.config,
        "best_epoch": best.epoch,
        "best_checkpoint": best.checkpoint_path,
        "val_metrics": {"split": "val", **best.val_metrics},
        "test_metrics": evaluation.headline(),
        "parent_run_id": run.parent_id,
        "child_run_ids": [tracker.runs[t] for t in sorted(tracker.runs)],
        "trials": len(trials),
        "trials_errored": sum(1 for r in trials if r.error),
        "manifest_hash": run.prep.manifest.hash,
        "manifest": str(run.prep.manifest_path),
        "trainval_subset": str(run.prep.trainval_path),
        "data": str(run.prep.root),
        "limit_per_class": run.options.data.limit_per_class,
        "space": str(run.space.path),
        "storage": run.options.storage,
        "seconds": round(time.monotonic() - run.started, 1),
        "optuna_storage": run.study_storage,
        "optuna_study": run.run_name if run.study_storage else None,
        "best_costs": best.costs,
        **(front_summary(run.front, run.space.objectives, run.space.search.pick) if run.front else {}),
        **published,  # model_uri, registered_model, registered_version, ...
    }


def describe_pick(rule) -> str:
    """A pick rule in words, e.g. 'best val_macro_f1 with cpu_ms_per_film <= 4'."""
    from tune_ct.train.space import COSTS, METRICS

    rule_best = rule.best if rule else "the first objective"
    limits = [f"{n} {'<=' if {**METRICS, **COSTS}[n] == 'min' else '>='} {b:g}" for n, b in (rule.limits if rule else ())]
    return f"best {rule_best}" + (f" with {' and '.join(limits)}" if limits else "")


def log_front(run: SearchRun, summary: dict) -> None:
    """Multi-objective: the front as a plot and JSON on the parent run, its members' child runs tagged."""
    if run.front is None:
        return
    from tune_ct.track.figures import plot_pareto_front
    from tune_ct.track.runs import log_json

    names = list(summary["objectives"])
    with tempfile.TemporaryDirectory() as tmp:
        plot_pareto_front(summary["trial_points"], summary["pareto_front"], names, Path(tmp) / "pareto_front.png",
                          f"{len(summary['trial_points'])} trials, {len(summary['pareto_front'])} on the front; "
                          f"pick: {describe_pick(run.space.search.pick)}", summary["pick"]["limits"])
        run.client.log_artifacts(run.parent_id, tmp)
    log_json(run.client, run.parent_id, {k: summary[k] for k in ("objectives", "pick", "pareto_front")},
             "pareto_front.json")
    for member in summary["pareto_front"]:
        if member["run_id"]:
            run.client.set_tag(member["run_id"], "tune_ct.pareto_front", "picked" if member["picked"] else "true")
    run.client.set_tag(run.parent_id, "tune_ct.pick_met", str(summary["pick"]["met"]).lower())


def print_front(summary: dict, rule: str) -> None:
    names = list(summary["objectives"])
    rows = [(f"{'*' if m['picked'] else ' '} {m['trial_id']}", "  ".join(
        [f"{m['backbone']} {m['image_size']}px ep {m['epoch']}"] + [f"{n} {m[n]:.4g}" for n in names]))
        for m in summary["pareto_front"]]
    print_table(f"Pareto front on the val split ({len(rows)} of {len(summary['trial_points'])} trials; * = picked, "
                f"rule: {rule})", rows)
    if not summary["pick"]["met"]:
        print(f"WARNING: no trial on the front meets the rule ({rule}); picked the one nearest to its first limit",
              flush=True)


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def print_result(best, evaluation, summary: dict) -> None:
    from tune_ct.evaluate.metrics import metric_key

    test = summary["test_metrics"]
    print_table(f"Best trial {best.trial_id} (chosen on the val split, epoch {best.epoch})",
                [(k, str(v)) for k, v in sorted(best.config.items())])
    sources = (("val", best.val_metrics), ("test", evaluation.metrics))
    rows = [(f"{split} {name}", f"{src[f'{split}_{name}']:.3f}") for split, src in sources
            for name in ("accuracy", "balanced_accuracy", "macro_f1")]
    rows += [(f"{split} recall {c}", f"{src[f'{split}_recall_{metric_key(c)}']:.3f}")
             for split, src in sources for c in CLASSES]
    rows.append(("test majority-class macro-F1", f"{test['majority_class_macro_f1']:.3f}"))
    n_val = sum(map(sum, best.val_metrics["confusion_matrix"])) if best.val_metrics.get("confusion_matrix") else "?"
    print_table(f"Metrics: val split (n={n_val}) and locked test split (n={test['n']})", rows)
    print(f"\ntest confusion matrix (rows true, cols predicted: {', '.join(CLASSES)}):")
    for label, row in zip(CLASSES, test["confusion_matrix"]):
        print(f"  {label:<16} {row}")
    print(f"\n{summary['trials']} trials ({summary['trials_errored']} errored) in {summary['seconds']:.0f}s; "
          f"MLflow parent run {summary['parent_run_id']}")
    if summary.get("optuna_study"):
        print(f"Optuna study {summary['optuna_study']}: optuna-dashboard {summary['optuna_storage']}")


def report_tracking(summary: dict, tracker) -> None:
    """Say what reached MLflow late or never (the server dropped out during the search)."""
    summary["time_budget_s"] = tracker.time_budget_s
    summary["stopped_by_time_budget"] = list(tracker.stopped_by_time_budget)
    if tracker.stopped_by_time_budget:
        print(f"time budget of {tracker.time_budget_s:.0f}s reached: {len(tracker.stopped_by_time_budget)} running "
              "trial(s) stopped at their last epoch (tagged stopped_early=time_budget)")
    summary["tracking_delayed_calls"] = tracker.delayed
    summary["tracking_unlogged"] = list(tracker.unlogged)
    if tracker.delayed:
        print(f"MLflow: {tracker.delayed} log call(s) went through on a retry after the server dropped out")
    if tracker.unlogged:
        log.warning(f"MLflow: {len(tracker.unlogged)} log call(s) never reached {tracker.tracking_uri}:\n  "
                    + "\n  ".join(tracker.unlogged))
