"""One parent run per search, one child run per trial, all logged from the driver.

Logging from the Tune driver (a `ray.tune.Callback`) rather than from workers means trial workers need no
tracking credentials, a trial that ASHA stops still gets its run closed (FINISHED, tagged as stopped early),
and a trial that Ray restarts keeps its one run.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray.tune import Callback

from tune_ct.track import tags
from tune_ct.track.trial_table import stop_reason
from tune_ct.track.figures import plot_confusion_matrix
from tune_ct.track.messages import first_line
from tune_ct.track.runs import flat_params

log = logging.getLogger(__name__)
DISK_FULL = "No space left on device"  # strerror(ENOSPC), in a trial's error text


def numeric_metrics(result: dict) -> dict[str, float]:
    """The per-epoch numbers of a trial result (Tune's own bookkeeping keys left out)."""
    skip = {"epoch", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
            "time_since_restore", "iterations_since_restore", "done", "n_train", "n_val", "epochs_planned"}
    return {k: float(v) for k, v in result.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TrialTracker(Callback):
    """Opens a child run when a trial starts, logs every epoch with step = epoch, closes it when the trial ends.

    A tracking server that drops out must not kill the search (an exception in a Tune callback stops the Tune
    loop): a log call that fails (after MLflow's own HTTP retries) is queued, retried in order at later
    callbacks once `retry_every_s` has passed, and flushed at the end; what still fails is listed in `unlogged`.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_epochs: int,
                 retry_every_s: float = 15.0, final_retries: int = 4, time_budget_s: float | None = None,
                 inputs: tuple = (), system_metrics_of: str | None = None, storage_path: str | None = None):
        self.tracking_uri = tracking_uri
        self.storage_path = storage_path  # where checkpoints go: a full local disk stops the search
        self.inputs = tuple(inputs)  # SplitInput (train, val): every child run's MLflow dataset inputs
        self.system_metrics_of = system_metrics_of  # the run name whose SystemSink holds the trials' samples
        self._system_steps: dict[str, int] = {}  # trial id -> samples logged (their step)
        self._last_drain = 0.0
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.retry_every_s = retry_every_s
        self.final_retries = final_retries
        self.time_budget_s = time_budget_s
        self.stopped_by_time_budget: list[str] = []  # trial ids
        self._started = time.monotonic()
        self.runs: dict[str, str] = {}  # trial id -> run id
        self._epochs: dict[str, set[int]] = {}  # trial id -> epochs in its run
        self.epochs_rerun: dict[str, list[int]] = {}  # trial id -> epochs trained again after a restart
        self.closed: set[str] = set()  # trial ids whose run was closed
        self.unlogged: list[str] = []  # what could not be logged by the end
        self.delayed = 0  # log calls that failed at first and went through on a retry
        self._client: MlflowClient | None = None
        self._pending: list[tuple[str, Callable[[], None]]] = []
        self._last_failure = 0.0
        self.interrupted = False  # told to stop by a signal: the trials still running are closed KILLED after
        self.disk_full: str | None = None  # a trial's error said its disk was full (ENOSPC): the search stops
        self.stepping = False  # inside a Tune step (on_step_begin without its on_step_end yet)
        self.disk_full_where = "storage"  # which disk: the Tune storage (checkpoints) or MLflow's "artifacts"
        self.artifacts_full: str | None = None  # a run's artifacts did not fit in the MLflow artifact store

    def __getstate__(self) -> dict:
        # Tune pickles callbacks with the experiment; clients and queued closures stay behind.
        state = dict(self.__dict__)
        state.update(_client=None, _pending=[])
        return state

    def __setstate__(self, state: dict) -> None:
        # A search started by an older tune_ct pickled a tracker without the newer attributes.
        self.__dict__.update({"inputs": (), "system_metrics_of": None, "_system_steps": {}, "_last_drain": 0.0,
                              "closed": set(), "epochs_rerun": {}, **state, "interrupted": False,
                              # a resumed search tries the disks again
                              "disk_full": None, "disk_full_where": "storage", "artifacts_full": None,
                              "_epochs": {}})  # re-read from MLflow: the snapshot may predate the last epochs

    def interrupt(self) -> None:
        """The search was told to stop: Tune ends the running trials, which must not be closed as finished (the
        search closes them KILLED, and --resume continues them)."""
        self.interrupted = True

    def _log(self, what: str, fn: Callable[[], None]) -> None:
        """Run a log call now, or queue it (in order) while the server is unreachable."""
        if self._pending and time.monotonic() - self._last_failure >= self.retry_every_s:
            self._flush()
        if self._pending:
            self._pending.append((what, fn))
            return
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any failure to log must not stop the trials
            self._pending.append((what, fn))
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self._last_failure = time.monotonic()
        first = first_line(exc)
        log.warning(f"WARNING: MLflow logging failed ({first}); {len(self._pending)} call(s) queued, retrying every "
                    f"{self.retry_every_s:g}s; trials keep running")

    def _flush(self) -> bool:
        while self._pending:
            what, fn = self._pending[0]
            try:
                fn()
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)
                return False
            self._pending.pop(0)
            self.delayed += 1
        return True

    def on_experiment_end(self, trials, **info):
        if not self.stepping:  # a step that raised: the driver closes or resumes the trials
            self.close_stopped_at_the_end(trials)
        self._log_system_metrics(every_s=0.0)
        for attempt in range(self.final_retries):
            if self._flush():
                break
            if attempt < self.final_retries - 1:  # no wait after the last attempt
                time.sleep(self.retry_every_s)
        self.unlogged = [what for what, _ in self._pending]
        if self.unlogged:
            log.warning(f"WARNING: {len(self.unlogged)} MLflow log call(s) could not be delivered to "
                        f"{self.tracking_uri}: " + "; ".join(self.unlogged[:20]))

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _find_run(self, trial_id: str) -> str | None:
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{tags.TRIAL_ID}` = '{trial_id}' and tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def run_id(self, trial) -> str:
        """The trial's one child run: reused when Ray restarts the trial or the search is resumed."""
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        run_id = self._find_run(trial.trial_id)
        if run_id is None:
            config = dict(trial.config)
            run = self.client.create_run(
                self.experiment_id,
                tags={MLFLOW_PARENT_RUN_ID: self.parent_run_id, tags.TRIAL_ID: trial.trial_id,
                      MLFLOW_RUN_NAME: f"{trial.trial_id}-{config.get('backbone', 'trial')}"},
            )
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=flat_params(config))
            if self.inputs:
                from tune_ct.track.datasets import log_inputs

                log_inputs(self.client, run_id, self.inputs)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._log(f"open run of trial {trial.trial_id}", lambda: self.run_id(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numeric_metrics(result).items()]

        def log() -> None:
            run_id = self.run_id(trial)
            logged = self._logged_epochs(trial.trial_id, run_id)
            if step in logged:
                self._rerun(trial.trial_id, run_id, step)
                return
            self.client.log_batch(run_id, metrics=metrics)
            logged.add(step)

        self._log(f"trial {trial.trial_id} epoch {step} metrics", log)
        self._log_system_metrics()

    def _logged_epochs(self, trial_id: str, run_id: str) -> set[int]:
        """The epochs already in the trial's run, read from MLflow once per driver (a resumed search's driver
        finds the ones its predecessor logged after its last snapshot)."""
        if trial_id not in self._epochs:
            self._epochs[trial_id] = {m.step for m in self.client.get_metric_history(run_id, "val_loss")}
        return self._epochs[trial_id]

    def _rerun(self, trial_id: str, run_id: str, epoch: int) -> None:
        """An epoch reported again: Ray restarted the trial (lost node, dead driver) from a checkpoint older than
        its last report, since a report reaches the callbacks before its checkpoint is registered. The run keeps
        the first report of each epoch (MLflow metrics cannot be replaced) and says which epochs ran twice."""
        again = self.epochs_rerun.setdefault(trial_id, [])
        if epoch not in again:
            again.append(epoch)
            self.client.set_tag(run_id, tags.EPOCHS_RERUN, ",".join(map(str, sorted(again))))

    def _log_system_metrics(self, every_s: float = 10.0) -> None:
        """The trials' system samples that reached the sink, each in its trial's run (step = sample number)."""
        if not self.system_metrics_of or time.monotonic() - self._last_drain < every_s:
            return
        from tune_ct.track.system import drain

        self._last_drain = time.monotonic()
        by_run: dict[str, list[Metric]] = {}
        for trial_id, sample in drain(self.system_metrics_of):
            run_id = self.runs.get(trial_id)
            if run_id is None:
                continue
            step = self._system_steps.get(trial_id, 0)
            self._system_steps[trial_id] = step + 1
            stamp = int(sample.pop("time") * 1000)
            by_run.setdefault(run_id, []).extend(Metric(k, float(v), stamp, step) for k, v in sample.items())
        for run_id, metrics in by_run.items():
            self._log(f"system metrics of run {run_id}",
                      lambda run_id=run_id, metrics=metrics: self.client.log_batch(run_id, metrics=metrics))

    def on_step_end(self, iteration, trials, **info):
        self.stepping = False
        self._log_system_metrics()

    def close_stopped_at_the_end(self, trials) -> list[str]:
        """Trials Tune ended without a completion event: at the time budget Tune stops the running trials where
        they are (mid-epoch; their reported epochs and checkpoints stay) and tells no callback. Their runs are
        closed FINISHED, tagged stopped_early=time_budget, and listed like the others the budget stopped."""
        if self.interrupted:
            return []
        out_of_time = self.time_budget_s is not None and time.monotonic() - self._started >= self.time_budget_s
        ended = [t for t in trials if t.trial_id in self.runs and t.trial_id not in self.closed
                 and t.status == "TERMINATED" and self._still_open(t.trial_id)]
        for trial in ended:
            if out_of_time:
                self.stopped_by_time_budget.append(trial.trial_id)
            self._close(trial, RunStatus.to_string(RunStatus.FINISHED), {
                tags.EPOCHS_RUN: str(int((trial.last_result or {}).get("epoch", 0))),
                tags.STOPPED_EARLY: "time_budget" if out_of_time else "stopped at the end of the search",
            })
        return [t.trial_id for t in ended]

    def _still_open(self, trial_id: str) -> bool:
        """Whether the trial's run is RUNNING in MLflow (a close the last snapshot missed is not redone)."""
        try:
            return self.client.get_run(self.runs[trial_id]).info.status == "RUNNING"
        except Exception:  # noqa: BLE001 - server down: close it (the close is queued and retried)
            return True

    def _close(self, trial, status: str, run_tags: dict[str, str]) -> None:
        self.closed.add(trial.trial_id)
        result = dict(trial.last_result or {})  # copied now: a queued close must log this trial's last result
        self._log(f"close run of trial {trial.trial_id} ({status})",
                  lambda: self._close_now(trial, result, status, run_tags))

    def _close_now(self, trial, result: dict, status: str, run_tags: dict[str, str]) -> None:
        run_id = self.run_id(trial)
        matrix = result.get("val_confusion_matrix")
        try:
            if matrix:
                self._log_matrix(run_id, trial.trial_id, result.get("epoch", "?"), matrix)
        except Exception as exc:  # a full artifact store must not leave the run RUNNING: it is closed below
            if not is_disk_full(exc):
                raise
            self.artifacts_full = self.artifacts_full or first_line(exc)
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])
        self.client.set_terminated(run_id, status)

    def _log_matrix(self, run_id: str, trial_id: str, epoch, matrix) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            plot_confusion_matrix(matrix, Path(tmp) / "val_confusion_matrix.png",
                                  f"val split, epoch {epoch}, trial {trial_id}")
            (Path(tmp) / "val_confusion_matrix.json").write_text(json.dumps({"epoch": epoch, "matrix": matrix}))
            self.client.log_artifacts(run_id, tmp)

    def _stop_if_artifacts_full(self) -> None:
        """The MLflow artifact store is full: every next trial's records would be lost too, so the search stops,
        the run just closed being closed properly. Raised at Tune's next step: an error in on_trial_complete is
        caught by Tune ("Error stopping trial"), one in on_step_begin ends its loop."""
        full = self.artifacts_full
        if full and self.disk_full is None:
            self.disk_full, self.disk_full_where = full, "artifacts"
            raise OSError(errno.ENOSPC, f"MLflow artifact store: {full}")

    def on_step_begin(self, iteration, trials, **info):
        self.stepping = True  # until on_step_end: Tune ends the experiment mid-step only when the step raised
        self._stop_if_artifacts_full()

    def setup(self, **info):
        self._started = time.monotonic()  # the search's time budget counts from here (also on --resume)
        self.interrupted = self.stepping = False

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs_run = int((trial.last_result or {}).get("epoch", 0))
        out_of_time = self.time_budget_s is not None and time.monotonic() - self._started >= self.time_budget_s
        reason = stop_reason(epochs_run, int(trial.config.get("epochs", self.max_epochs)), out_of_time)
        if reason == "time_budget":
            self.stopped_by_time_budget.append(trial.trial_id)
        self._close(trial, RunStatus.to_string(RunStatus.FINISHED), {
            tags.EPOCHS_RUN: str(epochs_run),
            tags.STOPPED_EARLY: reason,
        })

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = error_text(trial)[:5000]
        self._close(trial, RunStatus.to_string(RunStatus.FAILED), {tags.ERROR: reason})
        self._stop_if_artifacts_full()
        full = DISK_FULL in reason or storage_nearly_full(self.__dict__.get("storage_path"))
        if full and self.disk_full is None:
            # Every next trial would fail the same way: stop the search (an error in a callback ends Tune's loop).
            self.disk_full = next((line.strip() for line in reversed(reason.splitlines()) if DISK_FULL in line),
                                  f"{DISK_FULL} under {self.__dict__.get('storage_path')}")
            raise OSError(errno.ENOSPC, f"trial {trial.trial_id}: {self.disk_full}")

    def get_state(self) -> dict:
        return {"runs": dict(self.runs), "system_steps": dict(self._system_steps), "closed": sorted(self.closed)}

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))
        self.closed.update(state.get("closed", []))
        self._system_steps.update(state.get("system_steps", {}))


def error_text(trial) -> str:
    """What a failed trial's error says, its exception line first. Tune writes the error file on the driver and
    copies it to the storage later (after this callback, so the storage's copy is often missing here)."""
    try:
        error = trial.get_error()
        if not error and trial.error_file and Path(trial.error_file).is_file():
            error = Path(trial.error_file).read_text()
    except Exception as exc:  # noqa: BLE001 - e.g. an empty error file on a full disk
        return f"trial failed; its error could not be read ({type(exc).__name__}: {exc})"
    if not error:
        return "trial failed"
    text = str(error)
    # The traceback's own lines are indented; "Failure # n" and Ray's coloured task line head each failure.
    said = [line for line in text.splitlines() if line and not line[0].isspace()
            and not line.startswith(("Failure # ", "\x1b", "Traceback"))]
    return f"{said[-1]}\n\n{text}" if said else text


NEARLY_FULL_BYTES = 64 * 2**20  # less than this free where checkpoints go: the next one will not fit either


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error, or one it was raised from, is a full disk (ENOSPC; a server says it in its text)."""
    seen = 0
    while exc is not None and seen < 10:
        if getattr(exc, "errno", None) == errno.ENOSPC or DISK_FULL in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def storage_nearly_full(storage: str | None) -> bool:
    """Whether a local Tune storage has almost no space left (a full disk also keeps Tune from writing the
    trial's error, so its text cannot be relied on)."""
    import shutil

    if not storage or "://" in storage:
        return False
    try:
        return shutil.disk_usage(storage).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def close_orphan_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_ids: set[str]) -> list[str]:
    """Close the child runs of trials that Tune does not know, and say why.

    A trial started moments before the search's driver died can be missing from Tune's last experiment snapshot;
    on --resume Tune samples a new trial in its place and the old trial's run would stay RUNNING for ever."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")
    orphans = [r for r in runs if r.info.status == "RUNNING" and r.data.tags.get(tags.TRIAL_ID) not in trial_ids]
    for run in orphans:
        client.set_tag(run.info.run_id, tags.ORPHAN, "the driver died as this trial started, before Tune recorded "
                                                    "it; the resumed search ran a new trial in its place")
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    return [r.info.run_id for r in orphans]
