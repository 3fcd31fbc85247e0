"""The tracking queue of TrialTracker (tune_ct/track/tracker.py): a log call that fails is queued and retried in
order, never raised into Tune. The log calls here are plain callables that fail a given number of times; no MLflow
client is created (nothing here touches `tracker.client`)."""

from __future__ import annotations

import math
import pickle
import time

import pytest

from tune_ct.track.tracker import TrialTracker, numeric_metrics


class Flaky:
    """A log call that raises its first `fails` times, then records itself in `done`."""

    def __init__(self, name: str, fails: int, done: list[str]):
        self.name, self.fails, self.done, self.calls = name, fails, done, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.fails:
            raise ConnectionError(f"server down ({self.name} try {self.calls})")
        self.done.append(self.name)


def tracker(retry_every_s: float = 0.0, final_retries: int = 2) -> TrialTracker:
    return TrialTracker("http://127.0.0.1:9", "0", "parent", max_epochs=3, retry_every_s=retry_every_s,
                        final_retries=final_retries)


def pending(t: TrialTracker) -> list[str]:
    return [what for what, _ in t._pending]


def test_a_call_that_works_runs_at_once():
    t, done = tracker(), []
    t._log("a", Flaky("a", 0, done))
    assert done == ["a"] and pending(t) == [] and t.delayed == 0


def test_a_failing_call_is_queued_not_raised():
    t, done = tracker(retry_every_s=60), []
    a = Flaky("a", 1, done)
    t._log("open a", a)
    assert a.calls == 1 and done == [] and pending(t) == ["open a"]


def test_calls_wait_behind_a_queued_one_until_retry_is_due():
    t, done = tracker(retry_every_s=60), []
    a, b, c = Flaky("a", 1, done), Flaky("b", 0, done), Flaky("c", 0, done)
    t._log("a", a)
    t._log("b", b)
    assert (a.calls, b.calls) == (1, 0) and pending(t) == ["a", "b"]  # not retried yet, b not run out of order
    t._last_failure -= 61  # a minute has passed since the failure
    t._log("c", c)
    assert done == ["a", "b", "c"] and pending(t) == [] and a.calls == 2
    assert t.delayed == 2  # a and b went through late; c ran at once


def test_retry_every_zero_retries_at_the_next_call_in_order():
    t, done = tracker(retry_every_s=0), []
    a, b, c = Flaky("a", 2, done), Flaky("b", 0, done), Flaky("c", 0, done)
    t._log("a", a)  # fails (1)
    t._log("b", b)  # retry of a fails (2): b queued behind it, not run
    assert done == [] and b.calls == 0 and pending(t) == ["a", "b"]
    t._log("c", c)  # retry: a, then b, then c
    assert done == ["a", "b", "c"] and (a.calls, b.calls, c.calls) == (3, 1, 1) and t.delayed == 2


def test_a_retry_that_fails_halfway_keeps_the_rest_in_order():
    t, done = tracker(retry_every_s=0), []
    a, b, c = Flaky("a", 1, done), Flaky("b", 2, done), Flaky("c", 0, done)
    t._log("a", a)
    t._log("b", b)  # a goes through on retry; b fails at once and is queued
    assert done == ["a"] and pending(t) == ["b"] and t.delayed == 1
    t._log("c", c)  # retry of b fails again: c waits
    assert pending(t) == ["b", "c"] and c.calls == 0
    t.on_experiment_end([])
    assert done == ["a", "b", "c"] and t.unlogged == [] and t.delayed == 3


def test_experiment_end_delivers_what_recovers():
    t, done = tracker(retry_every_s=60, final_retries=3), []
    t._log("a", Flaky("a", 2, done))
    t._log("b", Flaky("b", 0, done))
    t.retry_every_s = 0  # the final flush: no waiting between attempts in this test
    t.on_experiment_end([])
    assert done == ["a", "b"] and t.unlogged == [] and t.delayed == 2


def test_experiment_end_lists_what_never_got_through():
    t, done = tracker(retry_every_s=0, final_retries=3), []
    dead = Flaky("dead", 10**6, done)
    t._log("close run of trial x", dead)
    t._log("trial y epoch 1 metrics", Flaky("y", 0, done))
    t0 = time.monotonic()
    t.on_experiment_end([])
    assert time.monotonic() - t0 < 1.0
    assert t.unlogged == ["close run of trial x", "trial y epoch 1 metrics"]  # in order, the blocked one too
    assert done == [] and dead.calls == 1 + 1 + 3  # first try, the retry at the second _log, three final tries


def test_pickling_leaves_queued_closures_and_client_behind():
    t, done = tracker(retry_every_s=60), []
    t._log("a", Flaky("a", 1, done))
    t._log("b", lambda: None)  # a lambda cannot be pickled: the queue must not travel
    t.runs["trial_1"] = "run_1"
    clone = pickle.loads(pickle.dumps(t))
    assert clone._pending == [] and clone._client is None and clone.runs == {"trial_1": "run_1"}
    assert pending(t) == ["a", "b"]  # the original keeps its queue


def test_state_round_trip_keeps_the_run_ids():
    t = tracker()
    t.runs.update({"a": "1", "b": "2"})
    other = tracker()
    other.set_state(t.get_state())
    assert other.runs == {"a": "1", "b": "2"}


def test_numeric_metrics_drops_bookkeeping_bools_nan_and_non_numbers():
    result = {"val_macro_f1": 0.5, "val_loss": 1, "epoch": 3, "training_iteration": 3, "time_total_s": 9.0,
              "pid": 123, "done": False, "n_train": 10, "n_val": 5, "replayed": True, "bad": math.nan,
              "worse": math.inf, "device": "cpu", "val_confusion_matrix": [[1, 0], [0, 1]], "lr": 1e-3}
    out = numeric_metrics(result)
    assert out == {"val_macro_f1": 0.5, "val_loss": 1.0, "lr": 1e-3}
    assert all(type(v) is float for v in out.values())


@pytest.mark.parametrize("value", [-math.inf, float("nan")])
def test_numeric_metrics_never_passes_non_finite_values(value):
    assert numeric_metrics({"train_loss": value}) == {}


def test_orphaned_child_run_is_closed_and_tagged(tmp_path):
    """The run of a trial Tune no longer knows (started as the driver died) is closed KILLED with a reason; the
    runs of known trials are left alone (a real SQLite-backed MLflow store)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from mlflow.tracking import MlflowClient

    from tune_ct.track.tags import ORPHAN as ORPHAN_TAG
    from tune_ct.track.tags import TRIAL_ID as TRIAL_ID_TAG
    from tune_ct.track.tracker import close_orphan_runs

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("orphans", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp).info.run_id
    runs = {t: client.create_run(exp, tags={MLFLOW_PARENT_RUN_ID: parent, TRIAL_ID_TAG: t}).info.run_id
            for t in ("known", "orphan", "done")}
    client.set_terminated(runs["done"], "FINISHED")
    assert close_orphan_runs(client, exp, parent, {"known"}) == [runs["orphan"]]
    orphan, known = client.get_run(runs["orphan"]), client.get_run(runs["known"])
    assert orphan.info.status == "KILLED" and "driver died" in orphan.data.tags[ORPHAN_TAG]
    assert known.info.status == "RUNNING" and ORPHAN_TAG not in known.data.tags
    assert client.get_run(runs["done"]).info.status == "FINISHED"


def test_an_epoch_reported_again_after_a_restart_is_logged_once_and_tagged(tmp_path):
    """Ray hands a report to the callbacks before it registers the report's checkpoint: a trial restarted in
    between (lost node, dead driver) trains and reports that epoch again. Its run keeps one point per epoch (the
    first) and names the epochs that ran twice; a resumed driver (unpickled) re-reads what is logged from MLflow."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from tune_ct.track.tags import EPOCHS_RERUN

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("rerun", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    t = TrialTracker(uri, exp, "parent", max_epochs=5)
    t.runs["trial_1"] = run_id
    trial = SimpleNamespace(trial_id="trial_1", config={})

    def report(tracker: TrialTracker, epoch: int, loss: float) -> None:
        tracker.on_trial_result(0, [trial], trial, {"epoch": epoch, "val_loss": loss})

    for epoch, loss in [(1, 0.9), (2, 0.8), (3, 0.7), (3, 0.65), (4, 0.6)]:  # restarted from epoch 2's checkpoint
        report(t, epoch, loss)
    resumed = pickle.loads(pickle.dumps(t))
    report(resumed, 4, 0.55)  # the resumed driver restarts it from epoch 3's checkpoint
    report(resumed, 5, 0.5)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_loss"))
    assert history == [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6), (5, 0.5)]
    assert client.get_run(run_id).data.tags[EPOCHS_RERUN] == "3,4"
