"""The winner's one look at the locked test split: its checkpoint fetched and rebuilt, scored through the one
evaluation every command uses (tune_ct.evaluate.evaluation.evaluate_on), then published: full report, Grad-CAM,
lung focus, data overview and a new registered version (tune_ct.registry.publish)."""

from __future__ import annotations

from tune_ct.registry.publish import BestModel, Published
from tune_ct.search.plan import SearchPlan
from tune_ct.search.trials import ParentRun
from tune_ct.train.best import BestTrial


def score_winner(plan: SearchPlan, best: BestTrial) -> BestModel:
    from tune_ct.evaluate.evaluation import evaluate_on, locked_split_of
    from tune_ct.model.checkpoint import load_checkpoint_model
    from tune_ct.train.storage import fetch_checkpoint, storage_filesystem

    folder = fetch_checkpoint(storage_filesystem(plan.options.storage), best.checkpoint_path, plan.work)
    model, meta = load_checkpoint_model(folder)
    test = locked_split_of(plan.data, plan.options.data)
    return BestModel(model, meta, evaluate_on(model, meta, test), test)


def publish_winner(plan: SearchPlan, parent: ParentRun, tested: BestModel, client) -> Published:
    from tune_ct.registry.publish import publish_best

    return publish_best(client, parent.run_id, tested, plan.data, plan.options.register_name,
                        seed=plan.options.data.seed)


def score_held_out_films(plan: SearchPlan, tested: BestModel) -> dict | None:
    """The winner on the held-out origins' films (--holdout-origin), once; None when none were held out."""
    from tune_ct.evaluate.evaluation import held_out_set_of
    from tune_ct.evaluate.held_out import score_held_out

    films = held_out_set_of(plan.data, plan.options.data)
    if films is None:
        return None
    return score_held_out(tested.model, tested.meta, films, seed=plan.options.data.seed)


def origin_roles(plan: SearchPlan) -> dict:
    """Which origins the search trained on, selected on and held out: no figure is reported on the first two."""
    selected = sorted({e.origin if e.origin != "unknown" else plan.select_on.films.name
                       for e in plan.select_on.films.entries}) if plan.select_on else []
    return {"trained_on": plan.data.trained_on(), "selected_on": selected, "held_out": sorted(plan.data.held_out)}
