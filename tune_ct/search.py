"""The search: Ray Tune + Optuna (TPE) + ASHA over Ray Train trials, tracked in MLflow, tested once at the end.

    python -m tune_ct.search --data DIR --space search_spaces/cpu_quick.yaml

Flow: validate the space -> update the locked manifest -> cache train/val images -> Tune runs trials (each a
Ray Train TorchTrainer) -> the best checkpoint by val metric is evaluated once on the locked test split ->
everything is logged under one MLflow parent run and summarised.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tune_ct.data import default_workdir, prepare
from tune_ct.files import CLASSES, DataError
from tune_ct.metrics import metric_key, plot_confusion_matrix
from tune_ct.space import Space, SpaceError, load_space
from tune_ct.resume import EXPERIMENT_TAG, ResumeError, SearchRecord, find_parent_run, latest_search, read_record, write_record
from tune_ct.tracking import (TrialTracker, close_orphan_runs, code_version, default_tracking_uri, ensure_experiment,
                              log_json)
from tune_ct.tracking_server import TrackingError, check_tracking_uri
from tune_ct.trial import TRIAL_DRIVER_CPU, RunSettings, tune_trial


@dataclass
class BestTrial:
    trial_id: str
    config: dict
    epoch: int
    val_metrics: dict
    checkpoint_path: str
    run_id: str | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tune_ct.search", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="dataset folder in the Kaggle layout (default $TUNE_CT_DATA)")
    p.add_argument("--space", required=True, type=Path, help="search space YAML (see search_spaces/)")
    p.add_argument("--num-samples", type=int, help="trials to run (default: the space's search.num_samples)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's search.max_concurrent)")
    p.add_argument("--experiment", default="tune_ct", help="MLflow experiment name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./mlflow.db, artifacts ./mlartifacts)")
    p.add_argument("--storage", help="Ray Tune/Train storage: a folder or s3:// URI (default ./ray_results)")
    p.add_argument("--workdir", type=Path, help="manifests and image caches (default $TUNE_CT_WORKDIR or ./.tune_ct)")
    p.add_argument("--sources", type=Path, help="CSV with file,origin columns: stratify the split by origin too")
    p.add_argument("--seed", type=int, default=0, help="seed for the sampler, the split of a new manifest, training")
    p.add_argument("--limit-per-class", type=int, help="use N images per class (from the locked splits): smoke runs")
    p.add_argument("--summary", type=Path, help="write the result summary JSON here")
    p.add_argument("--register-name", default="cxr-classifier",
                   help="MLflow registered model the best model is added to as a new version ('' logs it unregistered)")
    p.add_argument("--address", help="Ray cluster address, e.g. 127.0.0.1:6379 on the head node or 'auto' "
                   "(default: start a local Ray). Token auth: RAY_AUTH_MODE=token and the cluster's token in "
                   "~/.ray/auth_token or RAY_AUTH_TOKEN_PATH")
    p.add_argument("--name", help="Tune experiment name, the folder under --storage (default search-DATE-TIME)")
    p.add_argument("--resume", action="store_true",
                   help="continue the search --name (default: the newest) under --storage after its driver died: "
                   "finished trials are kept, unfinished ones resume from their checkpoints, same MLflow runs")
    p.add_argument("--searcher", choices=["tpe", "random"], default="tpe",
                   help="tpe: Optuna TPE (default); random: Tune's random sampling, the baseline for benchmarks")
    p.add_argument("--scheduler", choices=["asha", "none"], default="asha",
                   help="asha: stop weak trials early (default); none: every trial runs all its epochs")
    p.add_argument("--weights", action="append", default=[], metavar="BACKBONE=FILE",
                   help="local pretrained weights for a backbone (repeatable); without it, train from scratch")
    args = p.parse_args(argv)
    for name in ("num_samples", "max_concurrent", "limit_per_class"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


def parse_weights(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        backbone, sep, file = item.partition("=")
        if not sep or not backbone or not file:
            raise SpaceError(f"--weights {item!r}: expected BACKBONE=FILE")
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise SpaceError(f"--weights {item!r}: file {path} does not exist (tune_ct never downloads weights)")
        out[backbone] = str(path)
    return out


class ClusterError(RuntimeError):
    """The Ray cluster cannot run a search to its end; the message says what to change."""


def check_dashboard(dashboard_url: str | None, address: str | None) -> None:
    """Refuse a cluster without Ray's dashboard: Ray Train frees the CPUs/GPUs of a trial that ASHA stops through
    a cleaner that asks the dashboard's state API. Without it those resources are never freed and the next trials
    wait for them until they time out (seen on a GPU node: the cleaner only logs "State API may be temporarily
    unavailable")."""
    if not dashboard_url:
        where = f"the cluster at {address}" if address else "the local Ray this search started"
        raise ClusterError(f"Ray's dashboard is not running on {where}. Install ray[default] (pip install -e .) "
                           "on every node, and do not start the head with --include-dashboard=false: Ray Train "
                           "needs its state API to free the resources of stopped trials.")


def check_resources(space: Space, max_concurrent: int) -> tuple[float, int]:
    """Refuse a trial shape the cluster cannot place: Ray Train would wait for it forever without an error."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    s = space.search
    need_cpu = s["workers_per_trial"] * s["cpus_per_worker"]
    gpus_per_worker = s["gpus_per_worker"]
    if gpus_per_worker == "auto":
        gpus_per_worker = 1 if gpus >= s["workers_per_trial"] else 0
    need_gpu = s["workers_per_trial"] * gpus_per_worker
    if need_cpu > cpus or need_gpu > gpus:
        raise SpaceError(
            f"{space.path}: search asks {s['workers_per_trial']} worker(s) x {s['cpus_per_worker']} CPU"
            f" / {gpus_per_worker} GPU per trial, but the cluster has {cpus:g} CPU and {gpus:g} GPU; lower "
            "search.workers_per_trial / cpus_per_worker / gpus_per_worker"
        )
    # Trials beyond what the cluster can hold at once would only wait for resources, holding a Tune slot.
    fits = [max_concurrent, int(cpus // need_cpu) if need_cpu else max_concurrent]
    if need_gpu:
        fits.append(int(gpus // need_gpu + 1e-9))
    return gpus_per_worker, max(1, min(fits))


def storage_filesystem(storage: str):
    """The pyarrow filesystem of --storage (checkpoint paths Ray reports are relative to it: no s3:// prefix)."""
    import pyarrow.fs

    if "://" not in storage:
        return pyarrow.fs.LocalFileSystem()
    return pyarrow.fs.FileSystem.from_uri(storage)[0]


def checkpoint_exists(filesystem, path: str) -> bool:
    import pyarrow.fs

    return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def fetch_checkpoint(filesystem, path: str, workdir: Path) -> Path:
    """A local folder holding the checkpoint: the path itself on local storage, else a download under workdir."""
    import pyarrow.fs
    import ray.train

    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        return Path(path)
    local = workdir / "best_checkpoint" / Path(path).name
    if not local.exists():
        # Download beside it and rename, so an interrupted download is never taken for a checkpoint later.
        partial = local.with_name(local.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        ray.train.Checkpoint(path, filesystem=filesystem).to_directory(str(partial))
        partial.rename(local)
    return local


def best_trial(results, metric: str, mode: str, tracker: TrialTracker, filesystem) -> BestTrial:
    """The trial and epoch with the best val metric over all epochs (model selection on val only)."""
    best = None
    for result in results:
        df = result.metrics_dataframe
        if df is None or metric not in df or "checkpoint_path" not in df:
            continue
        df = df.dropna(subset=[metric, "checkpoint_path"])
        # Ray Train deletes all but the best few checkpoints; only pick an epoch whose checkpoint is still there.
        df = df[[checkpoint_exists(filesystem, str(p)) for p in df["checkpoint_path"]]]
        if df.empty:
            continue
        row = df.loc[df[metric].idxmax() if mode == "max" else df[metric].idxmin()]
        if best is None or (row[metric] > best[1][metric] if mode == "max" else row[metric] < best[1][metric]):
            best = (result, row)
    if best is None:
        raise RuntimeError("no trial reported a checkpoint: see the trial errors above")
    result, row = best
    trial_id = str(row["trial_id"])
    val = {k: row[k] for k in row.index if str(k).startswith("val_") and k != "val_confusion_matrix"}
    val["confusion_matrix"] = row.get("val_confusion_matrix")
    return BestTrial(trial_id, dict(result.config), int(row["epoch"]), val, str(row["checkpoint_path"]),
                     tracker.runs.get(trial_id))


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def start_parent_run(client, experiment_id: str, run_name: str, space: Space, prep, args, storage: str,
                     num_samples: int, max_concurrent: int, gpus_per_worker, weights: dict) -> str:
    """The search's MLflow parent run, with what defines it as tags and params."""
    import mlflow

    parent = client.create_run(experiment_id, run_name=run_name, tags={
        EXPERIMENT_TAG: run_name,
        "tune_ct.space_file": str(space.path), "tune_ct.manifest_hash": prep.manifest.hash,
        "tune_ct.code_version": code_version(), "tune_ct.data": str(prep.root),
        "tune_ct.limit_per_class": str(args.limit_per_class or "none"),
        "tune_ct.role": "search",
    })
    parent_id = parent.info.run_id
    client.log_batch(parent_id, params=[mlflow.entities.Param(k, str(v)) for k, v in {
        "num_samples": num_samples, "max_concurrent": max_concurrent, "seed": args.seed, "metric": space.metric,
        "grace_period": space.search["grace_period"], "reduction_factor": space.search["reduction_factor"],
        "workers_per_trial": space.search["workers_per_trial"], "gpus_per_worker": gpus_per_worker,
        "n_trainval_images": len(prep.trainval_entries), "storage": storage,
        "sampler": {"tpe": "optuna.TPESampler", "random": "random"}[args.searcher],
        "scheduler": {"asha": "ASHA", "none": "none"}[args.scheduler],
        "pretrained": ",".join(weights) or "none (from scratch)",
    }.items()])
    client.log_artifact(parent_id, str(space.path))

    return parent_id


def run_search(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    space = load_space(args.space)  # every space mistake fails here, before any compute
    tracking_uri = args.tracking_uri or default_tracking_uri()
    check_tracking_uri(tracking_uri)  # a dead or credential-rejecting server fails here, before any compute
    if tracking_uri.startswith(("http://", "https://")):
        # Fail a log call within ~15 s instead of MLflow's minutes of backoff: TrialTracker queues and retries it.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    weights = parse_weights(args.weights)
    workdir = (args.workdir or default_workdir()).resolve()
    prep = prepare(args.data, workdir, args.sources, args.seed, args.limit_per_class)
    if prep.report.test_missing or prep.report.test_changed:
        print("WARNING: locked test split changed; see above", file=sys.stderr)

    import optuna
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.sample import Domain

    local_artifacts = None if tracking_uri.startswith(("http://", "https://", "databricks")) else Path("mlartifacts")
    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(client, args.experiment, local_artifacts)
    storage = args.storage or str(Path("ray_results").resolve())
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    run_name = args.name or f"search-{time.strftime('%Y%m%d-%H%M%S')}"
    record = None
    if args.resume:
        run_name = args.name or latest_search(storage)
        if not tune.Tuner.can_restore(f"{storage}/{run_name}"):
            raise ResumeError(f"--resume: {storage}/{run_name} holds no Tune experiment to restore")
        record = read_record(storage, run_name)
        parent_id = record.parent_run_id if record else find_parent_run(client, experiment_id, run_name)
        if parent_id is None:
            raise ResumeError(f"--resume: no MLflow parent run for {run_name} in experiment {args.experiment!r} at "
                              f"{tracking_uri}: pass the --tracking-uri and --experiment the search ran with")
    num_samples = args.num_samples or space.search["num_samples"]

    # "local" always starts a fresh Ray for this search; plain ray.init() would silently join any cluster that
    # `ray start` left running on this machine.
    context = ray.init(address=args.address or "local")
    check_dashboard(context.dashboard_url, args.address)
    gpus_per_worker, max_concurrent = check_resources(space, args.max_concurrent or space.search["max_concurrent"])

    if args.resume:
        client.update_run(parent_id, status="RUNNING")
        client.set_tag(parent_id, "tune_ct.resumed", time.strftime("%Y-%m-%dT%H:%M:%S"))
        print(f"resuming {storage}/{run_name}: MLflow parent run {parent_id}", flush=True)
    else:
        parent_id = start_parent_run(client, experiment_id, run_name, space, prep, args, storage, num_samples,
                                     max_concurrent, gpus_per_worker, weights)
        write_record(storage, SearchRecord(run_name, parent_id, experiment_id, args.experiment, str(space.path),
                                           num_samples))

    settings = RunSettings(
        subset_path=str(prep.trainval_path), cache_root=str(workdir / "cache"), storage_path=storage,
        experiment=run_name, seed=args.seed, workers_per_trial=space.search["workers_per_trial"],
        cpus_per_worker=float(space.search["cpus_per_worker"]), gpus_per_worker=float(gpus_per_worker),
        metric=space.metric, mode=space.mode, weights=weights,
    )
    # Build every image-size cache once here, so concurrent trials do not wait on each other's build.
    from tune_ct.cache import open_or_build

    for size in space.finite_values("image_size"):
        open_or_build(prep.trainval_path, int(size), workdir / "cache")

    tracker = TrialTracker(tracking_uri, experiment_id, parent_id, space.max_epochs)
    trainable = tune.with_resources(tune.with_parameters(tune_trial, run=settings), {"cpu": TRIAL_DRIVER_CPU})
    if args.resume:
        # Finished trials stay finished; unfinished and errored ones restart, and each Train run resumes from its
        # own checkpoint (same name under <storage>/train_runs). The searcher and callbacks come back from storage.
        tuner = tune.Tuner.restore(f"{storage}/{run_name}", trainable=trainable, resume_errored=True)
        tracker = restored_tracker(tuner, tracker)
    else:
        param_space = space.tune_space()
        # OptunaSearch refuses a space with nothing to sample (every value fixed): run those trials as they are.
        searchable = any(isinstance(v, Domain) for v in param_space.values())
        if args.searcher == "tpe" and not searchable:
            print(f"{space.path}: every parameter is fixed, so there is nothing for TPE to search; "
                  f"running {num_samples} trial(s) of that configuration")
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=space.metric, mode=space.mode, num_samples=num_samples, max_concurrent_trials=max_concurrent,
                search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=args.seed))
                if args.searcher == "tpe" and searchable else BasicVariantGenerator(random_state=args.seed),
                scheduler=ASHAScheduler(time_attr="epoch", max_t=space.max_epochs,
                                        grace_period=min(space.search["grace_period"], space.max_epochs),
                                        reduction_factor=space.search["reduction_factor"])
                if args.scheduler == "asha" else None,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(name=run_name, storage_path=storage, callbacks=[tracker],
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )
    status = "FAILED"
    try:
        results = tuner.fit()
        try:
            orphans = close_orphan_runs(client, experiment_id, parent_id,
                                        {str(r.metrics.get("trial_id")) for r in results if r.metrics})
        except Exception as exc:  # noqa: BLE001 - a tracking server down at the end must not lose the search
            orphans = []
            print(f"WARNING: could not look for orphaned child runs: {exc}", file=sys.stderr)
        if orphans:
            print(f"closed {len(orphans)} child run(s) of trials started as the driver died (KILLED, tagged "
                  f"tune_ct.orphan): {', '.join(orphans)}", flush=True)
        filesystem = storage_filesystem(storage)
        best = best_trial(results, space.metric, space.mode, tracker, filesystem)
        summary = finish(args, space, prep, workdir, client, parent_id, tracker, best, results, started, storage,
                         filesystem)
        summary["orphan_child_runs"] = orphans
        report_tracking(args, summary, tracker)
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(parent_id, status)
        ray.shutdown()


def restored_tracker(tuner, fallback: TrialTracker) -> TrialTracker:
    """The TrialTracker that Tuner.restore unpickled (it, not `fallback`, receives the trial events)."""
    callbacks = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    for callback in getattr(callbacks, "callbacks", None) or []:
        if isinstance(callback, TrialTracker):
            return callback
    return fallback


def report_tracking(args, summary: dict, tracker: TrialTracker) -> None:
    """Say what reached MLflow late or never (the server dropped out during the search)."""
    summary["tracking_delayed_calls"] = tracker.delayed
    summary["tracking_unlogged"] = list(tracker.unlogged)
    if tracker.delayed:
        print(f"MLflow: {tracker.delayed} log call(s) went through on a retry after the server dropped out")
    if tracker.unlogged:
        print(f"MLflow: {len(tracker.unlogged)} log call(s) never reached {tracker.tracking_uri}:", file=sys.stderr)
        for what in tracker.unlogged:
            print(f"  {what}", file=sys.stderr)
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=1, default=str))


def finish(args, space: Space, prep, workdir: Path, client, parent_id: str, tracker: TrialTracker,
           best: BestTrial, results, started: float, storage: str, filesystem) -> dict:
    """Evaluate the best checkpoint once on the locked test split; log and print everything."""
    from mlflow.entities import Metric, RunTag

    from tune_ct.evaluate import evaluate_model, load_checkpoint_model, write_test_subset

    model, saved = load_checkpoint_model(fetch_checkpoint(filesystem, best.checkpoint_path, workdir))
    test_subset = write_test_subset(prep.manifest, prep.root, workdir, args.limit_per_class, args.seed)
    evaluation = evaluate_model(model, int(saved["image_size"]), test_subset, workdir / "cache")
    test = evaluation.headline()
    from tune_ct.registry import publish_best  # full evaluation, Grad-CAM, lung focus, log + register the model

    published = publish_best(client, parent_id, args.tracking_uri or default_tracking_uri(), model, saved, evaluation,
                             test_subset, workdir / "cache", prep, args.register_name, seed=args.seed)

    now = int(time.time() * 1000)
    metrics = {f"best_val_{k[4:]}": float(v) for k, v in best.val_metrics.items()
               if k.startswith("val_") and isinstance(v, (int, float))}
    metrics.update({k: float(v) for k, v in evaluation.metrics.items() if not k.endswith("confusion_matrix")})
    metrics["test_majority_class_macro_f1"] = test["majority_class_macro_f1"]
    client.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()], tags=[
        RunTag("tune_ct.best_trial_id", best.trial_id), RunTag("tune_ct.best_run_id", best.run_id or ""),
        RunTag("tune_ct.best_checkpoint", best.checkpoint_path), RunTag("tune_ct.best_epoch", str(best.epoch)),
    ])
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        plot_confusion_matrix(test["confusion_matrix"], Path(tmp) / "test_confusion_matrix.png",
                              f"locked test split (n={test['n']}), best trial {best.trial_id}")
        client.log_artifacts(parent_id, tmp)

    trials = [r for r in results]
    errors = [r for r in trials if r.error]
    summary = {
        "best_trial_id": best.trial_id,
        "best_config": best.config,
        "best_epoch": best.epoch,
        "best_checkpoint": best.checkpoint_path,
        "val_metrics": {"split": "val", **{k: v for k, v in best.val_metrics.items()}},
        "test_metrics": test,
        "parent_run_id": parent_id,
        "child_run_ids": [tracker.runs[t] for t in sorted(tracker.runs)],
        "trials": len(trials),
        "trials_errored": len(errors),
        "manifest_hash": prep.manifest.hash,
        "manifest": str(prep.manifest_path),
        "trainval_subset": str(prep.trainval_path),
        "data": str(prep.root),
        "limit_per_class": args.limit_per_class,
        "space": str(space.path),
        "storage": storage,
        "seconds": round(time.monotonic() - started, 1),
        **published,  # model_uri, registered_model, registered_version, ...
    }
    log_json(client, parent_id, summary, "summary.json")
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary, indent=1, default=str))

    print_table(f"Best trial {best.trial_id} (chosen on the val split, epoch {best.epoch})",
                [(k, str(v)) for k, v in sorted(best.config.items())])
    rows = [(f"{split} {name}", f"{val:.3f}") for split, src in (("val", best.val_metrics), ("test", evaluation.metrics))
            for name, val in ((n, src[f"{split}_{n}"]) for n in ("accuracy", "balanced_accuracy", "macro_f1"))]
    rows += [(f"{split} recall {c}", f"{src[f'{split}_recall_{metric_key(c)}']:.3f}")
             for split, src in (("val", best.val_metrics), ("test", evaluation.metrics)) for c in CLASSES]
    rows.append(("test majority-class macro-F1", f"{test['majority_class_macro_f1']:.3f}"))
    n_val = sum(map(sum, best.val_metrics["confusion_matrix"])) if best.val_metrics.get("confusion_matrix") else "?"
    print_table(f"Metrics: val split (n={n_val}) and locked test split (n={test['n']})", rows)
    print(f"\ntest confusion matrix (rows true, cols predicted: {', '.join(CLASSES)}):")
    for label, row in zip(CLASSES, test["confusion_matrix"]):
        print(f"  {label:<16} {row}")
    print(f"\n{len(trials)} trials ({len(errors)} errored) in {summary['seconds']:.0f}s; MLflow parent run {parent_id}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_search(args)
    except (SpaceError, DataError, TrackingError, ResumeError, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
