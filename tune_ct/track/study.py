"""The search's Optuna study on disk: one study per search (named after the Tune experiment) in an RDB storage,
by default `sqlite:///optuna.db` in the working folder beside `mlflow.db`, so `optuna-dashboard URL` shows the
search live and the report reads the study itself instead of rebuilding it from MLflow runs.

What the study is told (`verdict`, by tune_ct.train.tuner.StudySearch and, for trials the time budget stopped,
by `finish_running`): every epoch is an intermediate value at step = epoch; a trial that ran all its epochs is
COMPLETE with its best epoch's value on the search metric (the epoch the search picks; a multi-objective study: its
values at the best epoch on the first objective, and no intermediate values); a trial stopped early (ASHA, the time
budget) is PRUNED; an errored one FAIL. Studies written before this (early-stopped trials told COMPLETE with their
last value) carry no `tune_ct.truthful` user attribute.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tune_ct.track.messages import first_line

DEFAULT_STORAGE = "sqlite:///optuna.db"
log = logging.getLogger(__name__)


class StudyError(ValueError):
    """The Optuna storage cannot be used; the message names the URL and says what to do."""


def resolve_storage_url(url: str | None) -> str:
    """--optuna-storage, else sqlite:///optuna.db; a relative SQLite path is made absolute, so the URL recorded on
    the parent run opens the same file from any folder (the report, optuna-dashboard)."""
    url = url or DEFAULT_STORAGE
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(Path(os.path.abspath(url[len(prefix):])))
    return url


def open_storage(url: str):
    """An Optuna RDBStorage (tables created on first use); any failure is a StudyError naming the URL."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds (bad URL, driver, server down, perms)
        raise StudyError(f"--optuna-storage {url}: cannot open the Optuna storage ({first_line(exc)}); pass a writable "
                         "sqlite:///FILE or a reachable database URL (postgresql+psycopg2://user@host/db)") from None


def check_study(url: str, name: str, resume: bool) -> None:
    """Before any compute: the storage opens, and a new search does not add its trials to another search's study
    (same --name without --resume), which would mix two searches in one history."""
    import optuna

    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no such study yet
        return
    if not resume and study.trials:
        raise StudyError(f"--optuna-storage {url}: study {name!r} already holds {len(study.trials)} trial(s) of an "
                         f"earlier search; continue it with --resume --name {name}, or choose another --name")


def create_search_study(url: str, name: str, objectives: tuple[tuple[str, str], ...], attrs: dict) -> None:
    """The new search's study, created before Ray's OptunaSearch loads it (it creates with load_if_exists), so it
    carries from the start what its trials saw (`attrs`: the data's identity, the metric; warm starts compare
    them) and that its trials are told the truth (TRUTHFUL_ATTR)."""
    import optuna

    directions = ["maximize" if mode == "max" else "minimize" for _, mode in objectives]
    study = optuna.create_study(study_name=name, storage=open_storage(url), directions=directions,
                                load_if_exists=True)
    for key, value in {TRUTHFUL_ATTR: True, **attrs}.items():
        study.set_user_attr(key, value)


def reconcile(study, ot_trials: dict, completed: set) -> list[int]:
    """Fail the RUNNING trials on disk that the searcher does not know; mark as completed the searcher's trials
    that the disk already finished. Returns the numbers of the failed ones."""
    from optuna.trial import TrialState

    known = {trial.number: tune_id for tune_id, trial in ot_trials.items()}
    orphans = []
    for frozen in study.get_trials(deepcopy=False):
        if frozen.state == TrialState.RUNNING and frozen.number not in known:
            study.tell(frozen.number, state=TrialState.FAIL)
            orphans.append(frozen.number)
        elif frozen.state.is_finished() and frozen.number in known:
            completed.add(known[frozen.number])
    if orphans:
        log.warning(f"Optuna study {study.study_name}: trial(s) {orphans} were started as the driver died, before "
                    "Tune recorded them; closed as FAIL (the resumed search runs new trials in their place)")
    return orphans


TRUTHFUL_ATTR = "tune_ct.truthful"  # study user attribute: trials are told as `verdict` says


def verdict(best: dict | None, metrics: list[str], epochs_run: int, planned: int, error: bool = False):
    """(Optuna state, value(s) or None) of a trial that ended: FAIL on an error or with no report; PRUNED when it
    ran fewer epochs than planned (Optuna ranks it by its intermediate values); else COMPLETE with the value(s) of
    `best`, its best report on the first metric."""
    from optuna.trial import TrialState

    if error or best is None or epochs_run == 0:
        return TrialState.FAIL, None
    if epochs_run < planned:
        return TrialState.PRUNED, None
    values = [float(best[m]) for m in metrics]
    return TrialState.COMPLETE, values if len(values) > 1 else values[0]


def finish_running(study, ended: list[tuple[dict, dict | None, int]], metrics: list[str]) -> list[int]:
    """Tell the study's RUNNING trials, which Tune ended without telling its searcher (at the time budget Tune
    stops running trials where they are): `ended` holds (Tune config, best report or None, epochs run) per trial,
    matched to the Optuna trial by its sampled parameters; `verdict` decides (stopped early: PRUNED)."""
    from optuna.trial import TrialState

    told = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        match = [(c, b, n) for c, b, n in ended if all(c.get(k) == x for k, x in frozen.params.items())]
        config, best, epochs_run = match[0] if match else ({}, None, 0)
        state, values = verdict(best, metrics, epochs_run, int(config.get("epochs", epochs_run)))
        study.tell(frozen.number, values, state=state)
        told.append(frozen.number)
    return told


def load_study(url: str, name: str):
    """The study of a search, or None when its storage or study is gone."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=url)
    except Exception as exc:  # noqa: BLE001 - a moved file, a server down: callers fall back
        log.info(f"Optuna study {name!r} could not be read from {url}: {exc}")
        return None


PLOTS = (("optuna_history.png", "plot_optimization_history"), ("optuna_importances.png", "plot_param_importances"),
         ("optuna_parallel_coordinate.png", "plot_parallel_coordinate"), ("optuna_slice.png", "plot_slice"),
         # A multi-objective study: Optuna's own front (history, slice and parallel coordinates need one target).
         ("optuna_pareto_front.png", "plot_pareto_front"))


def study_plots(study, out: Path, names: tuple[str, ...] = tuple(n for n, _ in PLOTS)) -> list[str]:
    """Optuna's matplotlib plots of a study as PNG files in `out`; returns the names drawn. A plot Optuna cannot
    draw (importances need two finished trials with varied parameters) is skipped and said at INFO."""
    import warnings

    from optuna.visualization import matplotlib as om

    from tune_ct.track.figures import pyplot

    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name, fn in PLOTS:
        if name not in names:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental on every call
                ax = getattr(om, fn)(study)
            fig = (ax.ravel()[0] if hasattr(ax, "ravel") else ax).figure
            fig.set_size_inches(max(6, fig.get_size_inches()[0]), 3.6)
            fig.tight_layout()
            fig.savefig(out / name, dpi=90)
            plt.close(fig)
            made.append(name)
        except Exception as exc:  # noqa: BLE001 - too few trials, nothing searched
            log.info(f"{name} not drawn ({exc})")
    return made
