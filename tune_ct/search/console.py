"""What a search prints on the console, outside the live trial table (tune_ct.track.trial_table): where to watch
it, what it selects on, and at the end everything from the SearchSummary; after a stop, the command that
finishes it."""

from __future__ import annotations

import shlex

from tune_ct.data.files import CLASSES
from tune_ct.search.summary import SearchSummary


def say(text: str) -> None:
    print(text, flush=True)


def announce(name: str, context, verbose: bool, study_storage: str | None) -> None:
    """Where to watch the search from outside this console."""
    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    say(f"search {name}: Ray dashboard {context.dashboard_url or '(none)'}; trial and Ray Train logs in "
        f"{session or 'the Ray session'}/logs" + ("" if verbose else " (--verbose prints them here)"))
    if study_storage:
        say(f"Optuna study {name} in {study_storage}: watch it with `optuna-dashboard {study_storage}`")


def announce_selection(films, metric: str) -> None:
    say(f"selecting on {films.name} ({films.root}): {len(films.entries)} films, classes "
        f"{', '.join(films.classes_present)}, content hash {films.content_hash}; metric {metric}")
    confounded = films.one_class_origins()
    if confounded:
        say("WARNING: in the select-on set each origin holds one class ("
            + ", ".join(f"{o}: {c}" for o, c in confounded.items()) + "), so a model that tells these collections "
            "apart scores well on it without reading the disease; prefer origins that hold several classes, or "
            "check the winner on a held-out origin (--holdout-origin)")


def announce_links(tracking_uri: str, experiment_id: str, run_id: str) -> None:
    """Where the search's runs and models open in MLflow's UI (its model-training view)."""
    from tune_ct.track.uri import ui_links

    say("MLflow " + "; ".join(ui_links(tracking_uri, experiment_id, run_id)))


def announce_resume(plan) -> None:
    say(f"resuming {plan.options.storage}/{plan.name}: MLflow parent run {plan.resumed_parent_id}")


def announce_orphans(orphans: list[str]) -> None:
    if orphans:
        say(f"closed {len(orphans)} child run(s) of trials started as the driver died (KILLED, tagged "
            f"tune_ct.orphan): {', '.join(orphans)}")


def resume_command(argv: tuple[str, ...], name: str) -> str:
    """The exact command that finishes a stopped search."""
    args = [a for a in argv if a != "--resume"]
    if "--name" not in args:
        args += ["--name", name]
    return f"python -m tune_ct.search {shlex.join(args)} --resume"


def print_stopped(argv: tuple[str, ...], name: str, why: str) -> None:
    say(f"\nsearch stopped ({why}): nothing was tested or registered. Finish it with:\n  {resume_command(argv, name)}")


def print_late_stop(signal_name: str) -> None:
    say(f"\n{signal_name} came during the final test and registration: they finished (above); stopping now")


def describe_pick(rule) -> str:
    """A pick rule in words, e.g. 'best val_macro_f1 with cpu_ms_per_film <= 4'."""
    from tune_ct.train.space import COSTS, METRICS

    rule_best = rule.best if rule else "the first objective"
    limits = [f"{n} {'<=' if {**METRICS, **COSTS}[n] == 'min' else '>='} {b:g}" for n, b in (rule.limits if rule else ())]
    return f"best {rule_best}" + (f" with {' and '.join(limits)}" if limits else "")


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def print_outcome(summary: SearchSummary) -> None:
    """The end of a search: the winner's full test report, where it looks, its registration, the tables."""
    from tune_ct.evaluate.full_report import format_report

    backbone, size = summary.best_config.get("backbone"), summary.best_config.get("image_size")
    print("\n" + format_report(summary.test_report, f"best model ({backbone}, {size}px)"))
    print_focus(summary.lung_focus)
    if summary.registered_version is not None:
        say(f"registered {summary.registered_model} version {summary.registered_version} ({summary.model_uri}); "
            f"promote it with `python -m tune_ct.promote --model {summary.registered_model} --version "
            f"{summary.registered_version}`")
    print_result(summary)
    print_held_out(summary)
    if summary.pareto_front:
        from tune_ct.train.space import Pick

        print_front(summary, describe_pick(Pick(summary.pick["best"], tuple(summary.pick["limits"].items()))))
    print_stops(summary)


def print_focus(focus: dict) -> None:
    split = focus.get("split", "test")
    print(f"\nlung focus ({split} split, share of Grad-CAM mass inside the lung mask; an even spread "
          f"would score {focus.get('uniform_cam_baseline') or float('nan'):.2f}):")
    for cls, v in focus["per_class"].items():
        print(f"  {cls:<16} " + (f"{v['mean']:.3f} (n={v['n']})" if v["mean"] is not None else "n/a (no masks)"))


def print_result(summary: SearchSummary) -> None:
    from tune_ct.evaluate.metrics import metric_key

    val, test, choice = summary.val_metrics, summary.test_metrics, summary.selection
    value = "n/a" if choice["value"] is None else f"{choice['value']:.3f}"
    print_table(f"Best trial {summary.best_trial_id} (chosen on {choice['metric']} = {value}, {choice['split']}; "
                f"epoch {summary.best_epoch})", [(k, str(v)) for k, v in sorted(summary.best_config.items())])
    rows = [(f"val {name}", f"{val[f'val_{name}']:.3f}") for name in ("accuracy", "balanced_accuracy", "macro_f1")]
    rows += [(f"test {name}", f"{test[name]:.3f}") for name in ("accuracy", "balanced_accuracy", "macro_f1")]
    rows += [(f"val recall {c}", f"{val[f'val_recall_{metric_key(c)}']:.3f}") for c in CLASSES]
    rows += [(f"test recall {c}", f"{test['per_class_recall'][c]:.3f}") for c in CLASSES]
    rows += [(k, f"{v:.3f}") for k, v in val.items() if k.startswith(("ext_val_", "blend_")) and v is not None]
    rows.append(("test majority-class macro-F1", f"{test['majority_class_macro_f1']:.3f}"))
    n_val = sum(map(sum, val["confusion_matrix"])) if val.get("confusion_matrix") else "?"
    print_table(f"Metrics: val split (n={n_val}) and locked test split (n={test['n']})", rows)
    print(f"\ntest confusion matrix (rows true, cols predicted: {', '.join(CLASSES)}):")
    for label, row in zip(CLASSES, test["confusion_matrix"]):
        print(f"  {label:<16} {row}")
    say(f"\n{summary.trials} trials ({summary.trials_errored} errored) in {summary.seconds:.0f}s; "
        f"MLflow parent run {summary.parent_run_id}")
    if summary.optuna_study:
        say(f"Optuna study {summary.optuna_study}: optuna-dashboard {summary.optuna_storage}")


def print_held_out(summary: SearchSummary) -> None:
    """The held-out origins' figures (each over the classes it has) and the origins' roles."""
    from tune_ct.search.notes import generalisation_lines

    lines = generalisation_lines(summary)
    if lines:
        print("\n" + "\n".join(line for line in lines[1:] if not line.startswith("|---")).replace("**", ""))


def print_front(summary: SearchSummary, rule: str) -> None:
    names = list(summary.objectives)
    rows = [(f"{'*' if m['picked'] else ' '} {m['trial_id']}", "  ".join(
        [f"{m['backbone']} {m['image_size']}px ep {m['epoch']}"] + [f"{n} {m[n]:.4g}" for n in names]))
        for m in summary.pareto_front]
    print_table(f"Pareto front on the val split ({len(rows)} of {len(summary.trial_points)} trials; * = picked, "
                f"rule: {rule})", rows)
    if not summary.pick["met"]:
        say(f"WARNING: no trial on the front meets the rule ({rule}); picked the one nearest to its first limit")


def print_stops(summary: SearchSummary) -> None:
    """Trials the time budget stopped, and what reached MLflow late or never (the server dropped out)."""
    import logging

    if summary.stopped_by_time_budget:
        say(f"time budget of {summary.time_budget_s:.0f}s reached: {len(summary.stopped_by_time_budget)} running "
            "trial(s) stopped at their last epoch (tagged stopped_early=time_budget)")
    if summary.tracking_delayed_calls:
        say(f"MLflow: {summary.tracking_delayed_calls} log call(s) went through on a retry after the server "
            "dropped out")
    if summary.tracking_unlogged:
        logging.getLogger(__name__).warning(
            f"MLflow: {len(summary.tracking_unlogged)} log call(s) never reached the tracking server:\n  "
            + "\n  ".join(summary.tracking_unlogged))
