"""What a search prints while it runs: one compact table of the trials, a row each time a trial starts, reports an
epoch or ends (a Tune callback on the driver, like the tracker).

Tune's own reporters print either a full status table every few seconds (the legacy CLIReporter, so the line
count grows with the run's length) or, with Ray 2.60's default output engine, a boxed config and a boxed result
per trial; `tune.RunConfig(progress_reporter=...)` is ignored by that engine. A row per event keeps a 6-trial
search to a few dozen lines, reads the same in a terminal, a log file or CI, and every row is greppable by its
trial id (the id the summary, the MLflow run names and the `tune_ct.trial_id` tags use).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from ray.tune import Callback

COLUMNS = ("trial", "backbone", "px", "lr", "epoch", "best", "state")
WIDTHS = (8, 16, 4, 8, 5, 7, 0)


def stop_reason(epochs_run: int, epochs_planned: int, out_of_time: bool) -> str:
    """Why a trial that Tune completed ran fewer epochs than planned: "no" (it did not), asha or time_budget."""
    if epochs_run >= epochs_planned:
        return "no"
    return "time_budget" if out_of_time else "asha"


@dataclass
class TrialRow:
    """What the table shows of one trial."""

    trial_id: str
    backbone: str
    image_size: str
    lr: str
    epochs: int
    epoch: int = 0
    best: float | None = None
    state: str = "RUNNING"

    def cells(self) -> tuple[str, ...]:
        best = "-" if self.best is None else f"{self.best:.3f}"
        return (self.trial_id, self.backbone[:16], self.image_size, self.lr, f"{self.epoch}/{self.epochs}", best,
                self.state)


def format_row(cells: tuple[str, ...]) -> str:
    return "  ".join(c.ljust(w) if w else c for c, w in zip(cells, WIDTHS)).rstrip()


def row_for(trial, max_epochs: int) -> TrialRow:
    config = dict(trial.config)
    lr = config.get("lr")
    return TrialRow(trial.trial_id, str(config.get("backbone", "?")), str(config.get("image_size", "?")),
                    f"{lr:.2e}" if isinstance(lr, (int, float)) else str(lr),
                    int(config.get("epochs", max_epochs)))


@dataclass
class TableState:
    rows: dict[str, TrialRow] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    last_footer: float = 0.0
    footer_shown: bool = False


class TrialTable(Callback):
    """Prints the header once, then a row per trial event; in a terminal one status line under the rows is
    rewritten in place (running / finished trials, the best so far, elapsed time) so a long epoch still shows
    the search is alive. Nothing here decides what else reaches the console: the command does."""

    def __init__(self, metric: str, mode: str, max_epochs: int, time_budget_s: float | None = None,
                 stream=None, live: bool | None = None):
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.time_budget_s = time_budget_s
        self._stream = stream
        self._live = live
        self._state = TableState()

    def __getstate__(self) -> dict:
        # Tune pickles callbacks with the experiment; a stream cannot be pickled (and the resumed search's own
        # table replaces this one anyway).
        return {**self.__dict__, "_stream": None}

    @property
    def stream(self):
        return self._stream or sys.stdout

    @property
    def live(self) -> bool:
        return self._live if self._live is not None else bool(getattr(self.stream, "isatty", lambda: False)())

    def _write(self, line: str) -> None:
        self._clear_footer()
        self.stream.write(line + "\n")
        self.stream.flush()

    def _clear_footer(self) -> None:
        if self._state.footer_shown:
            self.stream.write("\r\x1b[K")
            self._state.footer_shown = False

    def _footer(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.live or (not force and now - self._state.last_footer < 1.0):
            return
        rows = self._state.rows.values()
        running = sum(1 for r in rows if r.state == "RUNNING")
        best = self._best_row()
        text = (f"  {running} running, {len(rows) - running} ended; best {self.metric} "
                + (f"{best.best:.3f} ({best.trial_id})" if best else "-") + f"; {now - self._state.started:.0f}s")
        self._clear_footer()
        self.stream.write(text)
        self.stream.flush()
        self._state.footer_shown, self._state.last_footer = True, now

    def _best_row(self) -> TrialRow | None:
        scored = [r for r in self._state.rows.values() if r.best is not None]
        if not scored:
            return None
        return (max if self.mode == "max" else min)(scored, key=lambda r: r.best)

    def _show(self, row: TrialRow) -> None:
        self._write(format_row(row.cells()))
        self._footer(force=True)

    def setup(self, **info):
        self._state = TableState()
        total = info.get("total_num_samples")
        where = "select-on set" if self.metric.startswith("ext_") else (
            "val split and select-on set" if self.metric.startswith("blend_") else "val split")
        self._write(f"\ntrials{f' ({total})' if total else ''}: best = best {self.metric} so far ({where})")
        self._write(format_row(COLUMNS))

    def _row(self, trial) -> TrialRow:
        if trial.trial_id not in self._state.rows:
            self._state.rows[trial.trial_id] = row_for(trial, self.max_epochs)
        return self._state.rows[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row.state = "RUNNING"
        self._show(row)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row.epoch = int(result.get("epoch", row.epoch))
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and (row.best is None or (value > row.best if self.mode == "max"
                                                                     else value < row.best)):
            row.best = float(value)
        if row.epoch < row.epochs:  # the last epoch's row is the DONE row that follows at once
            self._show(row)

    def on_trial_complete(self, iteration, trials, trial, **info):
        row = self._row(trial)
        out_of_time = (self.time_budget_s is not None
                       and time.monotonic() - self._state.started >= self.time_budget_s)
        reason = stop_reason(row.epoch, row.epochs, out_of_time)
        row.state = {"no": "DONE", "asha": "STOPPED (asha)", "time_budget": "STOPPED (time budget)"}[reason]
        self._show(row)

    def on_trial_error(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row.state = "ERROR" + (f" (see {trial.error_file})" if getattr(trial, "error_file", None) else "")
        self._show(row)

    def on_step_end(self, iteration, trials, **info):
        self._footer()

    def on_experiment_end(self, trials, **info):
        self._clear_footer()
        states = [r.state.split(" ")[0] for r in self._state.rows.values()]
        counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("DONE", "STOPPED", "ERROR") if s in states)
        self._write(f"{len(states)} trial(s) ended in {time.monotonic() - self._state.started:.0f}s: {counts}")
