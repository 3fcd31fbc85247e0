"""The search's Optuna study on disk: one study per search (named after the Tune experiment) in an RDB storage,
by default `sqlite:///optuna.db` in the working folder beside `mlflow.db`, so `optuna-dashboard URL` shows the
search live and the report reads the study itself instead of rebuilding it from MLflow runs.

Optuna records for each trial the value of the space's metric in the trial's *last* report (Ray's OptunaSearch
tells Optuna the last result when a trial ends: the last epoch it ran, also for a trial ASHA stopped), not its
best epoch; the epochs reported before the end are its intermediate values (step = Tune's training iteration).
A multi-objective study (search.objectives) is told each trial's values at its best epoch on the first objective,
the epoch its Pareto point and checkpoint come from (tune_ct.train.tuner.StudySearch); it has no intermediate values.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

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
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise StudyError(f"--optuna-storage {url}: cannot open the Optuna storage ({first}); pass a writable "
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


def finish_running(study, ended: list[tuple[dict, object]]) -> list[int]:
    """Tell the study's RUNNING trials, which Tune ended without telling its searcher (at the time budget Tune
    stops running trials where they are), with their values so far: `ended` holds (Tune config, value or list of
    values or None) per trial, matched to the Optuna trial by its sampled parameters. None: FAIL."""
    from optuna.trial import TrialState

    told = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        match = [v for config, v in ended if all(config.get(k) == x for k, x in frozen.params.items())]
        if match and match[0] is not None:
            study.tell(frozen.number, match[0])
        else:
            study.tell(frozen.number, state=TrialState.FAIL)
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
