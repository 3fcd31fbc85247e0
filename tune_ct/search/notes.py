"""The Markdown descriptions MLflow's UI shows first: the search's parent run (tag mlflow.note.content) and the
registered version it produced. Built from the SearchSummary, so they say what the summary JSON says."""

from __future__ import annotations

from tune_ct.data.files import CLASSES
from tune_ct.search.summary import SearchSummary

FIGURES = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1"))


def _n_val(val: dict) -> str:
    matrix = val.get("confusion_matrix")
    return str(sum(map(sum, matrix))) if matrix else "?"


def figures_table(val: dict, test: dict) -> list[str]:
    """Val (where the model was chosen) and locked test (where it was measured once), side by side."""
    lines = [f"| figure | val split (n={_n_val(val)}, selection) | locked test split (n={test['n']}) |",
             "|---|---|---|"]
    for key, label in FIGURES:
        lines.append(f"| {label} | {val.get(f'val_{key}', float('nan')):.3f} | {test[key]:.3f} |")
    for c in CLASSES:
        lines.append(f"| recall {c} | {val.get('val_recall_' + c.lower().replace(' ', '_'), float('nan')):.3f} | "
                     f"{test['per_class_recall'][c]:.3f} |")
    lines.append(f"| majority-class macro-F1 (floor) | | {test['majority_class_macro_f1']:.3f} |")
    return lines


def front_lines(summary: SearchSummary) -> list[str]:
    """A multi-objective search's Pareto front (val split and costs), the registered member marked."""
    if not summary.pareto_front:
        return []
    names = list(summary.objectives)
    pick = summary.pick
    lines = ["", f"**Pareto front** (val split; {len(summary.pareto_front)} of {len(summary.trial_points)} "
             f"trials; pick: best {pick['best']} within {pick['limits'] or 'no limits'}"
             f"{'' if pick['met'] else ', NOT met: nearest member taken'})", "",
             "| trial | model | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    lines += [f"| {'**' + m['trial_id'] + '** (registered)' if m['picked'] else m['trial_id']} | {m['backbone']} "
              f"{m['image_size']}px | " + " | ".join(f"{m[n]:.4g}" for n in names) + " |"
              for m in summary.pareto_front]
    return lines


def _ci(ci) -> str:
    return f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else ""


def _recalls(recall: dict) -> str:
    return ", ".join(f"{c} {v:.2f}" for c, v in recall.items())


def generalisation_lines(summary: SearchSummary) -> list[str]:
    """The locked test split and the held-out origins side by side, each with its 95% CI, and which origins were
    trained and selected on (no figure is reported on those)."""
    roles = summary.origins or {}
    if not roles.get("held_out") and not roles.get("selected_on"):
        return []
    test = summary.test_metrics
    lines = ["", "**Internal and held-out figures** (macro-F1 over the classes each set has, 95% bootstrap CI)", "",
             "| films | role | n | classes | macro-F1 (95% CI) | recall per class |", "|---|---|---|---|---|---|",
             f"| locked test split | internal: origins trained on | {test['n']} | all four | {test['macro_f1']:.3f}"
             f"{_ci(summary.test_ci95.get('macro_f1'))} | {_recalls(test['per_class_recall'])} |"]
    held = summary.held_out or {}
    for origin, fig in held.get("per_origin", {}).items():
        lines.append(f"| {origin} | held out | {fig['n']} | {', '.join(fig['classes'])} | {fig['macro_f1']:.3f}"
                     f"{_ci(fig['macro_f1_ci95'])} | {_recalls(fig['per_class_recall'])} |")
    if len(held.get("per_origin", {})) > 1:
        fig = held["pooled"]
        lines.append(f"| all held out | held out | {fig['n']} | {', '.join(fig['classes'])} | {fig['macro_f1']:.3f}"
                     f"{_ci(fig['macro_f1_ci95'])} | {_recalls(fig['per_class_recall'])} |")
    lines += ["", f"Trained on: {', '.join(roles.get('trained_on', [])) or '-'}; selected on: "
              f"{', '.join(roles.get('selected_on', [])) or '- (val split)'} (no figure reported on it); held out: "
              f"{', '.join(roles.get('held_out', [])) or '-'}."]
    return lines


def search_note(summary: SearchSummary, tracking_uri: str) -> str:
    """The parent run's description: the winner, its figures with their splits named, and where everything is."""
    choice = summary.selection
    lines = [f"## {summary.name}: best trial {summary.best_trial_id} (epoch {summary.best_epoch})", "",
             f"Chosen on **{choice['metric']}** ({choice['split']}: {_value(choice['value'])}); the **locked test** "
             "split was used once, for this model only.", ""]
    lines += figures_table(summary.val_metrics, summary.test_metrics)
    lines += generalisation_lines(summary)
    lines += ["", "**Best configuration**", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted(summary.best_config.items())]
    lines += front_lines(summary)
    lines += model_lines(summary)
    lines += ["", f"- Trials: {summary.trials} ({summary.trials_errored} errored), {summary.seconds:.0f} s; "
              f"space `{summary.space}`",
              f"- Data: `{summary.data}`, manifest `{summary.manifest_hash}`, limit per class "
              f"{summary.limit_per_class or 'none'}"]
    if summary.registered_version is not None:
        lines.append(f"- Model: `{summary.registered_model}` version {summary.registered_version} "
                     f"(`{summary.model_uri}`)")
    elif summary.model_uri:
        lines.append(f"- Model: `{summary.model_uri}` (not registered)")
    if summary.optuna_study:
        lines.append(f"- Optuna study `{summary.optuna_study}` in `{summary.optuna_storage}`: "
                     f"`optuna-dashboard {summary.optuna_storage}`; plots under `optuna/`")
    lines.append(f"- Report: `python -m tune_ct.report --run-id {summary.parent_run_id} --tracking-uri "
                 f"{tracking_uri} --out report/` (Markdown with curves, Grad-CAM, Optuna history)")
    return "\n".join(lines) + "\n"


def model_lines(summary: SearchSummary) -> list[str]:
    """The trials as MLflow models, best first on the metric that chose the winner (mlflow.search_logged_models)."""
    if not summary.trial_models:
        return []
    metric = summary.selection["metric"]
    lines = ["", f"**Trial models** (MLflow logged models, best first on {metric}, {summary.selection['split']}; "
             "weights in the Tune storage)", "", f"| model | trial | {metric} | stopped early |", "|---|---|---|---|"]
    lines += [f"| `{m['name']}`{' (registered)' if m['model_id'] == summary.best_model_id else ''} | "
              f"{m['trial_id']} | {_value(m.get(metric))} | {m['stopped_early']} |" for m in summary.trial_models]
    return lines


def _value(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def version_note(summary: SearchSummary) -> str:
    """The registered version's description: its locked-test figures and where it came from."""
    test, val = summary.test_metrics, summary.val_metrics
    recalls = ", ".join(f"{c} {v:.3f}" for c, v in test["per_class_recall"].items())
    return (f"Locked test split (n={test['n']}) of `{summary.data}` (manifest `{summary.manifest_hash}`): "
            f"accuracy {test['accuracy']:.3f}, balanced accuracy {test['balanced_accuracy']:.3f}, macro-F1 "
            f"{test['macro_f1']:.3f}; recall {recalls}; majority-class macro-F1 {test['majority_class_macro_f1']:.3f}."
            f"\n\nChosen on the val split (macro-F1 {val.get('val_macro_f1', float('nan')):.3f}) as trial "
            f"{summary.best_trial_id}, epoch {summary.best_epoch}, of search {summary.name} (MLflow run "
            f"{summary.parent_run_id}).")
