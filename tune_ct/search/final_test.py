"""The winner's one look at the locked test split: its checkpoint fetched and rebuilt, scored through the one
evaluation every command uses (tune_ct.evaluate.evaluation.evaluate_on), then published: full report, Grad-CAM,
lung focus, data overview and a new registered version (tune_ct.registry.publish)."""

from __future__ import annotations

import logging

from tune_ct.registry.publish import BestModel, Published
from tune_ct.search.plan import SearchPlan
from tune_ct.search.trials import ParentRun
from tune_ct.train.best import BestTrial

log = logging.getLogger(__name__)


def score_winner(plan: SearchPlan, best: BestTrial) -> BestModel:
    from tune_ct.evaluate.evaluation import evaluate_on, locked_split_of
    from tune_ct.model.checkpoint import load_checkpoint_model
    from tune_ct.train.storage import fetch_checkpoint, storage_filesystem

    folder = fetch_checkpoint(storage_filesystem(plan.options.storage), best.checkpoint_path, plan.work)
    model, meta = load_checkpoint_model(folder)
    test = locked_split_of(plan.data, plan.options.data)
    return BestModel(model, meta, evaluate_on(model, meta, test), test)


def publish_winner(plan: SearchPlan, parent: ParentRun, tested: BestModel, client) -> Published:
    """The winner's report, Grad-CAM and registered version; a full MLflow artifact store stops the search with a
    DiskFullError (the model half-logged marked FAILED and its files removed, nothing registered)."""
    from tune_ct.registry.publish import publish_best
    from tune_ct.track.tracker import is_disk_full

    try:
        return publish_best(client, parent.run_id, tested, plan.data, plan.options.register_name,
                            seed=plan.options.data.seed)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        drop_unfinished_models(client, plan.experiment_id, parent.run_id)
        raise artifact_store_full(plan, client, tested, exc) from None


def artifact_store_full(plan: SearchPlan, client, tested: BestModel, exc: Exception):
    from tune_ct.data.cache import DiskFullError
    from tune_ct.track.messages import first_line

    weights = sum(p.numel() * p.element_size() for p in tested.model.parameters())
    need = 2 * weights / 2**20 + 2  # the weights, their ONNX export, and a few MiB of figures and reports
    store = client.get_experiment(plan.experiment_id).artifact_location
    return DiskFullError(
        f"the MLflow artifact store ({store}) is full: registering the winner needs about {need:.0f} MiB there "
        f"({first_line(exc)}); nothing was registered; free space there (or give the tracking "
        f"server a larger artifact store), then run the same command with --resume --name {plan.name}: the trials "
        "are not run again, the winner is tested and registered")


def drop_unfinished_models(client, experiment_id: str, run_id: str) -> None:
    """Logged models of the run that never became READY: marked FAILED, their local files removed."""
    import contextlib
    import shutil

    from mlflow.entities import LoggedModelStatus

    with contextlib.suppress(Exception):  # best effort: the store that failed may fail again
        for model in client.search_logged_models(experiment_ids=[experiment_id]):
            if model.source_run_id == run_id and model.status != LoggedModelStatus.READY:
                client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
                if str(model.artifact_location).startswith(("file://", "/")):
                    shutil.rmtree(str(model.artifact_location).removeprefix("file://"), ignore_errors=True)


def score_held_out_films(plan: SearchPlan, tested: BestModel) -> dict | None:
    """The winner on the held-out origins' films (--holdout-origin), once; None when none were held out."""
    from tune_ct.evaluate.evaluation import held_out_set_of
    from tune_ct.evaluate.held_out import score_held_out

    from tune_ct.data.subsets import held_out_copies

    films = held_out_set_of(plan.data, plan.options.data)
    if films is None:
        return None
    copies = held_out_copies(plan.data.manifest, plan.data.held_out)
    if copies:
        log.warning(f"{len(copies)} held-out film(s) left out of the held-out figures: a copy of each is among the "
                    f"films trials train on (e.g. {copies[0].key})")
    report = score_held_out(tested.model, tested.meta, films, seed=plan.options.data.seed)
    return {**report, "left_out_as_copies_of_trained_films": len(copies)}


def origin_roles(plan: SearchPlan) -> dict:
    """Which origins the search trained on, selected on and held out: no figure is reported on the first two."""
    selected = sorted({e.origin if e.origin != "unknown" else plan.select_on.films.name
                       for e in plan.select_on.films.entries}) if plan.select_on else []
    return {"trained_on": plan.data.trained_on(), "selected_on": selected, "held_out": sorted(plan.data.held_out)}
