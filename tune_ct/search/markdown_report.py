"""A Markdown report of the newest search in an MLflow experiment, with its pictures.

It reads what the search logged (parent and child runs, evaluation, Grad-CAM, data overview), draws the
learning curves of the best trials and Optuna's search-history plots (the search's own study, read from the
Optuna storage its parent run names; rebuilt from the child runs for a search that kept none), and ends with the seed's questions answered from the measured numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tune_ct.data.files import CLASSES
from tune_ct.search.summary import SearchSummary
from tune_ct.track import tags as T
from tune_ct.track.figures import pyplot as _plt


class ReportError(LookupError):
    """No search to report on; the message says what to pass."""


def find_parent(client, experiment: str, run_id: str | None):
    if run_id:
        return client.get_run(run_id)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportError(f"no MLflow experiment {experiment!r}; pass --experiment and --tracking-uri")
    runs = client.search_runs([exp.experiment_id],
                              f"tags.`{T.ROLE}` = '{T.ROLE_SEARCH}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ReportError(f"experiment {experiment!r} has no finished search run")
    return runs[0]


def _download(client, run_id: str, path: str, out: Path) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, path, str(out)))
    except Exception:  # noqa: BLE001 - an older search may not have logged it
        return None


def plot_class_counts(counts: dict, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    splits = [s for s in ("train", "val", "test") if s in counts]
    width = 0.8 / max(1, len(splits))
    for j, s in enumerate(splits):
        ax.bar([i + j * width for i in range(len(CLASSES))], [counts[s].get(c, 0) for c in CLASSES], width, label=s)
    ax.set_xticks([i + width * (len(splits) - 1) / 2 for i in range(len(CLASSES))], CLASSES, fontsize=8)
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.set_title("images per class and split (used by the search)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(client, children, metric: str, path: Path, top: int = 3) -> list:
    plt = _plt()
    best = sorted([c for c in children if metric in c.data.metrics], key=lambda c: -c.data.metrics[metric])[:top]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), dpi=100)
    for c in best:
        name = c.data.tags.get("mlflow.runName", c.info.run_id[:8])
        for ax, keys in zip(axes, (("train_loss", "val_loss"), (metric,))):
            for key in keys:
                h = sorted(client.get_metric_history(c.info.run_id, key), key=lambda m: m.step)
                if h:
                    ax.plot([m.step for m in h], [m.value for m in h], "-o" if "val" in key else "--", ms=3,
                            label=f"{name} {key}")
    axes[0].set_title("loss (train dashed, val solid)", fontsize=9)
    axes[1].set_title(f"{metric} (val split)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return best


def rebuild_study(children, space: dict | None, metric: str):
    """An Optuna study from the child runs' params and best val metric (for Optuna's plots)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    specs = (space or {}).get("params", {})
    trials = []
    done = [c for c in children if metric in c.data.metrics]
    searched = [k for k, v in specs.items() if isinstance(v, dict)] or sorted(
        {k for c in done for k in c.data.params})
    for c in done:
        params, dists = {}, {}
        for key in searched:
            if key not in c.data.params:
                continue
            raw, spec = c.data.params[key], specs.get(key, {})
            if isinstance(spec, dict) and "choice" in spec:
                choices = tuple(str(x) for x in spec["choice"])
                params[key], dists[key] = raw, CategoricalDistribution(choices)
            elif isinstance(spec, dict) and spec:
                kind, (low, high) = next(iter(spec.items()))
                params[key] = float(raw)
                dists[key] = FloatDistribution(float(low), float(high), log=kind.startswith("log"))
        trials.append(optuna.trial.create_trial(params=params, distributions=dists, value=c.data.metrics[metric]))
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    return study


def search_study(parent, children, space: dict | None, metric: str):
    """(study, where it came from): the search's study in its Optuna storage, else one rebuilt from the child
    runs (searches from before the study was kept on disk, the random searcher, a storage no longer there)."""
    from tune_ct.track.study import load_study

    tags = parent.data.tags
    if tags.get(T.OPTUNA_STORAGE) and tags.get(T.OPTUNA_STUDY):
        study = load_study(tags[T.OPTUNA_STORAGE], tags[T.OPTUNA_STUDY])
        if study is not None:
            return study, f"study `{tags[T.OPTUNA_STUDY]}` in `{tags[T.OPTUNA_STORAGE]}`"
    return rebuild_study(children, space, metric), "rebuilt from the MLflow child runs"


def optuna_plots(study, out: Path) -> list[str]:
    from tune_ct.track.study import study_plots

    return study_plots(study, out)


def _f(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def test_section(ev: dict | None) -> list[str]:
    """The locked-test figures of the best model, as Markdown tables."""
    if not ev:
        return []
    ci = ev["ci95"]
    lines = [f"## Best model on the locked test split (n={ev['n']})", "",
              "| figure (test split) | value | 95% CI (bootstrap) |", "|---|---|---|"]
    lines += [f"| {k} | {ev[k]:.3f} | {ci[k][0]:.3f}-{ci[k][1]:.3f} |" for k in
              ("accuracy", "balanced_accuracy", "macro_f1")]
    lines += [f"| macro ROC-AUC (one-vs-rest) | {_f(ev['macro_roc_auc_ovr'])} | |",
              f"| expected calibration error | {ev['ece']:.3f} | |",
              f"| majority-class macro-F1 (floor) | {ev['majority_class_macro_f1']:.3f} | |", "",
              "| class | n | precision | recall (sensitivity) | specificity | F1 | ROC-AUC |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {c} | {v['support']} | {_f(v['precision'])} | {_f(v['recall'])} | {_f(v['specificity'])} | "
              f"{_f(v['f1'])} | {_f(v['roc_auc_ovr'])} |" for c, v in ev["per_class"].items()]
    lines += ["", "![confusion matrix](evaluation/test_confusion_matrix.png) "
              "![reliability](evaluation/test_reliability.png)", ""]
    if ev.get("by_origin"):
        lines += ["| origin (test split) | n | accuracy |", "|---|---|---|"]
        lines += [f"| {o} | {v['n']} | {v['accuracy']:.3f} |" for o, v in ev["by_origin"].items()] + [""]
    return lines


def focus_section(focus: dict | None) -> list[str]:
    if not focus:
        return []
    lines = ["## Where the model looks (Grad-CAM, test split)", "", "![gallery](gradcam/gradcam_gallery.png)", "",
              f"Lung focus = share of the Grad-CAM mass (predicted class) inside the lung mask; a map spread "
              f"evenly would score {_f(focus.get('uniform_cam_baseline'), 2)}.", "",
              "| class | films with masks | mean lung focus |", "|---|---|---|"]
    lines += [f"| {c} | {v['n']} | {_f(v['mean'])} |" for c, v in focus["per_class"].items()] + [""]
    return lines


def registered_of(client, run_id: str, named: tuple[str, str] | None) -> tuple[str, str] | None:
    """(name, version) the search registered: as its summary names it, else the version whose source is the run."""
    if named is not None:
        return named
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except Exception:  # noqa: BLE001 - a store without a registry
        return None
    return (versions[0].name, str(versions[0].version)) if versions else None


def external_section(client, run_id: str, named: tuple[str, str] | None = None) -> list[str]:
    """The external evaluations of the search's registered version, newest first (one row per run)."""
    registered = registered_of(client, run_id, named)
    if registered is None:
        return []
    name, version = registered
    exp = client.get_experiment_by_name(T.EVALUATIONS_EXPERIMENT)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], f"tags.`{T.ROLE}` = '{T.ROLE_EXTERNAL}' and tags.`{T.MODEL_NAME}` = '{name}' and "
        f"tags.`{T.MODEL_VERSION}` = '{version}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"])
    lines = [f"## External sets ({name} v{version})", ""]
    if not runs:
        return lines + [f"Not evaluated on an external set yet: `python -m tune_ct.evaluate --model "
                        f"models:/{name}/{version} --external DIR --name NAME`.", ""]
    lines += ["Films from elsewhere, never used by the search; macro-F1 is over the classes each set has.", "",
              "| set | hash | n | classes present | accuracy | macro-F1 (95% CI) | run |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        t, m = r.data.tags, r.data.metrics
        ext = {k: t.get(T.EXTERNAL + k, "") for k in ("name", "hash", "n", "classes")}
        ci = f"{_f(m.get('external_macro_f1_ci_low'))}-{_f(m.get('external_macro_f1_ci_high'))}"
        lines.append(f"| {ext['name']} | `{ext['hash']}` | {ext['n']} | {ext['classes'].replace(',', ', ')} | "
                     f"{_f(m.get('external_accuracy'))} | {_f(m.get('external_macro_f1'))} ({ci}) | "
                     f"`{r.info.run_id}` |")
    return lines + [""]


def read_summary(client, run_id: str, out: Path) -> SearchSummary | None:
    """The search's SearchSummary as it logged it (None for a search that logged none)."""
    path = _download(client, run_id, "summary.json", out)
    return SearchSummary.from_dict(json.loads(path.read_text())) if path else None


def _logged_json(client, run_id: str, path: str, out: Path) -> dict | None:
    """A JSON artifact of an older search, logged before its SearchSummary carried it."""
    local = _download(client, run_id, path, out)
    return json.loads(local.read_text()) if local else None


def data_section(out: Path) -> list[str]:
    if not (out / "data" / "class_counts.json").is_file():
        return []
    counts = json.loads((out / "data" / "class_counts.json").read_text())
    plot_class_counts(counts["used_by_search"], out / "class_counts.png")
    lines = ["## Data", "", "![class counts](class_counts.png)", "", "| split | " + " | ".join(CLASSES) + " |",
             "|---|" + "---|" * len(CLASSES)]
    lines += [f"| {s} | " + " | ".join(str(v.get(c, 0)) for c in CLASSES) + " |"
              for s, v in counts["used_by_search"].items()]
    return lines + ["", "![sample images](data/sample_images.png)", ""]


def history_section(client, parent, children, metric: str, out: Path) -> list[str]:
    """Learning curves of the best trials and Optuna's plots of the search's study."""
    space = None
    space_name = Path(parent.data.tags.get(T.SPACE_FILE, "")).name
    if space_name and (p := _download(client, parent.info.run_id, space_name, out)):
        space = yaml.safe_load(p.read_text())
    best = plot_curves(client, children, metric, out / "curves.png")
    lines = ["## Training curves of the best trials (train and val splits)", "", "![curves](curves.png)", ""]
    lines += [f"- {c.data.tags.get('mlflow.runName')}: best {metric} {c.data.metrics[metric]:.3f} (val), "
              + ", ".join(f"{k}={c.data.params[k]}" for k in ("backbone", "lr", "image_size") if k in c.data.params)
              for c in best]
    study, where = search_study(parent, children, space, metric)
    made = optuna_plots(study, out) if len(study.trials) else []
    return lines + ["", f"## Search history (Optuna, {where})", "", *study_states(study)] + \
        [f"![{n}]({n})" for n in made] + [""]


def study_states(study) -> list[str]:
    """How the study's trials ended: the importance plot reads the finished (COMPLETE) ones only."""
    from collections import Counter

    counts = Counter(t.state.name for t in study.trials)
    if not counts.get("PRUNED"):
        return []
    return [f"{counts.get('COMPLETE', 0)} trial(s) ran all their epochs (COMPLETE, valued at their best epoch); "
            f"{counts['PRUNED']} were stopped early (PRUNED, ranked by how far they got). Parameter importances "
            "come from the COMPLETE trials only: a stopped trial's figure comes from fewer epochs.", ""]


def models_section(parent, metric: str) -> list[str]:
    """The search's trial models as MLflow lists them (mlflow.search_logged_models), best first on its metric."""
    from tune_ct.track.logged_models import DatasetRef, ranked_trial_models
    from tune_ct.train.space import METRICS

    context = "select_on" if metric.startswith(("ext_", "blend_")) else "val"
    inputs = [d.dataset for d in parent.inputs.dataset_inputs if any(t.value == context for t in d.tags)]
    if not inputs:
        return []
    models = ranked_trial_models(parent.info.experiment_id, parent.info.run_id, metric, METRICS.get(metric, "max"),
                                 DatasetRef(inputs[0].name, inputs[0].digest))
    if not models:
        return []
    lines = [f"## Trial models (MLflow logged models, best first on {metric}, {context})", "",
             f"| model | trial | {metric} | stopped early | checkpoint |", "|---|---|---|---|---|"]
    lines += [f"| `{m['name']}` | {m['trial_id']} | {_f(m.get(metric))} | {m['stopped_early']} | "
              f"`{m['checkpoint_uri']}` |" for m in models]
    return lines + [""]


def write_report(client, parent, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pid, tags = parent.info.run_id, parent.data.tags
    metric = parent.data.params.get("metric", "val_macro_f1")
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{pid}'")
    for folder in ("evaluation", "gradcam", "data"):
        _download(client, pid, folder, out)
    summary = read_summary(client, pid, out)
    ev = summary.test_report if summary else _logged_json(client, pid, "evaluation/test_evaluation.json", out)
    focus = summary.lung_focus if summary else _logged_json(client, pid, "lung_focus.json", out)
    lines = [f"# Search report: {tags.get('mlflow.runName', pid)}", "",
             f"MLflow parent run `{pid}`, {len(children)} trials, manifest `{tags.get(T.MANIFEST_HASH)}`, "
             f"data `{tags.get(T.DATA)}`, limit per class: {tags.get(T.LIMIT_PER_CLASS)}.", ""]
    if summary is not None:
        choice = summary.selection
        lines += [f"Winner: trial {summary.best_trial_id}, epoch {summary.best_epoch}, chosen on "
                  f"{choice['metric']} ({choice['split']}) = {_f(choice['value'])}.", ""]
    lines += data_section(out) + models_section(parent, metric) + history_section(client, parent, children, metric, out)
    lines += pareto_section(client, pid, summary, out)
    named = (summary.registered_model, str(summary.registered_version)) \
        if summary is not None and summary.registered_version is not None else None
    lines += test_section(ev) + generalisation_section(summary) + focus_section(focus)
    lines += external_section(client, pid, named)
    lines += answers(ev, focus)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def generalisation_section(summary: SearchSummary | None) -> list[str]:
    """Internal and held-out origins side by side (searches with --holdout-origin or --select-on)."""
    from tune_ct.search.notes import generalisation_lines

    lines = generalisation_lines(summary) if summary is not None else []
    return ["## Other hospitals: held-out origins beside the locked test split", *lines[1:], ""] if lines else []


def pareto_section(client, run_id: str, summary: SearchSummary | None, out: Path) -> list[str]:
    """A multi-objective search: its Pareto front (val split) as the parent run holds it, plot and table."""
    from tune_ct.search.notes import front_lines

    lines = front_lines(summary) if summary is not None else []
    if not lines:
        return []
    plot = ["![Pareto front](pareto_front.png)", ""] if _download(client, run_id, "pareto_front.png", out) else []
    return ["## Accuracy against cost: the Pareto front (val split)", "", *plot, *lines[1:], ""]


def answers(ev: dict | None, focus: dict | None) -> list[str]:
    out = ["## The seed's questions, answered from these numbers", ""]
    if not ev:
        return out + ["No test evaluation was logged for this search, so no answer can be given."]
    covid = ev["per_class"]["COVID"]
    lo, hi = ev["ci95"]["accuracy"]
    out += [
        f"**How accurate is it, on what split?** On the locked test split of this dataset (n={ev['n']} films, "
        f"never used for training or model selection) the best model reaches accuracy {ev['accuracy']:.3f} "
        f"(95% CI {lo:.3f}-{hi:.3f}), balanced accuracy {ev['balanced_accuracy']:.3f} and macro-F1 "
        f"{ev['macro_f1']:.3f}. COVID sensitivity is {_f(covid['recall'])} and specificity {_f(covid['specificity'])}.",
        "",
        "**How does that compare with radiologists?** Published reading of chest films for COVID-19 against RT-PCR "
        "gives sensitivity of roughly 47-89% and specificity of 41-86% across studies; in Wehbe et al. "
        "(Radiology 2021, DeepCOVID-XR) five thoracic radiologists reached 76-81% accuracy against 82% for their AI "
        f"on a held-out clinical test set. This model's COVID sensitivity {_f(covid['recall'])} / specificity "
        f"{_f(covid['specificity'])} {_versus(covid['recall'], covid['specificity'])}; either way they answer a "
        "different question.",
        "",
        "**Why a Kaggle-split accuracy is not the same question.** Here the labels come from the collection each "
        "film was taken from, not from a clinical reference (RT-PCR, follow-up) on consecutive patients; each class "
        "comes mostly from a different hospital or archive and two classes are pediatric, so a model can score "
        "well by recognising the source (markers, borders, age, processing) rather than disease. The test split "
        "shares those sources with training. The numbers above measure agreement with the collection labels on "
        "films like the training films, not diagnostic accuracy in a clinic.",
    ]
    if focus and focus["all_with_masks"]["mean"] is not None:
        out += ["", f"**Does it look at the lungs?** On test films with lung masks the mean lung focus is "
                f"{focus['all_with_masks']['mean']:.2f} (an even spread would give "
                f"{_f(focus.get('uniform_cam_baseline'), 2)}); masks exist only for Lung_Opacity and Viral Pneumonia "
                "in this set, so COVID and Normal are not covered. A value near the even-spread share means the "
                "model is not specifically reading the lungs."]
    return out


def _versus(sens, spec) -> str:
    if sens is None or spec is None:
        return "cannot be compared"
    if sens >= 0.89 and spec >= 0.86:
        return "are above the top of the published radiologist ranges on paper"
    if sens < 0.47 or spec < 0.41:
        return "fall below the published radiologist ranges"
    return "fall within the published radiologist ranges"
