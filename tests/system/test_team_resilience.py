"""A search against a real tracking server: refused up front when the server is unusable, and a killed driver resumes
with --resume (no finished trial re-run, one child run per trial, every trial once in the Optuna study; Train
runner); a trial that had trained to the end replays its last report. (Stops by signal: test_stop_signals.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from helpers.films import make_small_dataset
from helpers.search_checks import check_study_tells_the_truth
from helpers.servers import free_port, start_mlflow_server, stop_process
from mlflow.tracking import MlflowClient

from helpers.search_cli import REPO
TINY = REPO / "tests/spaces/tiny.yaml"
SERVE = REPO / "mlflow_server/serve.py"


def search_cmd(data: Path, *extra: str, space: Path = TINY) -> list[str]:
    return [sys.executable, "-m", "tune_ct.search", "--data", str(data), "--space", str(space), "--limit-per-class",
            "16", "--experiment", "team", *extra]


def train_runner_space(tmp_path: Path) -> Path:
    space = yaml.safe_load(TINY.read_text())
    space["search"]["runner"] = "train"
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(space))
    return tmp_path / "train.yaml"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return {**env, **extra}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the search and everything it started (its local Ray included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


# starts a basic-auth MLflow server (serve.py)
@pytest.mark.timeout(300)
def test_search_refuses_unusable_tracking_server_before_any_compute(tmp_path, data_dir):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    out = subprocess.run(search_cmd(data_dir, "--tracking-uri", f"http://127.0.0.1:{port}"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=clean_env())
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"http://127.0.0.1:{port} is unreachable" in out.stderr and "serve.py start" in out.stderr
    assert not (tmp_path / ".tune_ct").exists() and not (tmp_path / "ray_results").exists()  # no compute
    print(f"\nunreachable server refused in {time.monotonic() - t0:.1f}s")

    secret = "pw-" + os.urandom(6).hex()
    uri = f"http://admin:{secret}@127.0.0.1:{port}"
    out = subprocess.run(search_cmd(data_dir, "--tracking-uri", uri), cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env=clean_env())
    assert out.returncode == 2 and "carries credentials" in out.stderr and secret not in out.stderr + out.stdout

    # A basic-auth server: no credentials and wrong credentials are both refused before any compute.
    (tmp_path / "pw").write_text(secret)
    server = subprocess.Popen([sys.executable, str(SERVE), "start", "--root", str(tmp_path / "srv"), "--port",
                               str(port), "--auth", "--admin-password-file", str(tmp_path / "pw")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env=clean_env())
    try:
        assert subprocess.run([sys.executable, str(SERVE), "check", f"http://127.0.0.1:{port}", "--timeout",
                               "120"]).returncode == 0
        for env in (clean_env(), clean_env(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="wrong")):
            out = subprocess.run(search_cmd(data_dir, "--tracking-uri", f"http://127.0.0.1:{port}"), cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120, env=env)
            assert out.returncode == 2 and "(HTTP 401)" in out.stderr, out.stderr[-2000:]
            assert "MLFLOW_TRACKING_USERNAME" in out.stderr and secret not in out.stderr
        assert not (tmp_path / ".tune_ct").exists()
    finally:
        stop_process(server)


def children_of(client: MlflowClient, parent_id: str):
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


# The Train runner only: the resume path (Tune's restore, orphaned runs closed, the study reconciled) is the runners'
# shared code, and the actor runner's resume from a hard stop mid-trial is test_stop_signals.py's (three times);
# the actor case here cost ~45 s of CI time for no other claim.
@pytest.mark.timeout(900)
def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path, data_dir):
    data_dir = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=24)
    space = train_runner_space(tmp_path)
    server, uri = start_mlflow_server(tmp_path / "mlflow")
    client = MlflowClient(uri)
    storage = tmp_path / "storage"
    # No ASHA: it may stop the second trial after one epoch, too short a window to see it running and kill.
    args = ("--tracking-uri", uri, "--storage", str(storage), "--name", "night", "--num-samples", "2",
            "--max-concurrent", "1", "--scheduler", "none", "--summary", str(tmp_path / "summary.json"))
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(search_cmd(data_dir, *args, space=space), cwd=tmp_path, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True, env=clean_env())
    try:
        record = storage / "night" / "tune_ct_search.json"
        deadline = time.monotonic() + 480
        finished_before: dict[str, tuple] = {}
        # Kill the driver once one trial has finished and the next one is running.
        while time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.3)
            if not record.exists():
                continue
            parent_id = json.loads(record.read_text())["parent_run_id"]
            runs = children_of(client, parent_id)
            done = [r for r in runs if r.info.status == "FINISHED"]
            running = [r for r in runs if r.info.status == "RUNNING"]
            if done and running:
                finished_before = {r.data.tags["tune_ct.trial_id"]: (r.info.run_id, r.info.end_time) for r in done}
                break
        # Killed only once a trial had finished and the next one was seen running: else the test proves nothing.
        assert finished_before, f"no trial finished in time: {(tmp_path / 'first.log').read_text()[-3000:]}"
        os.kill(first.pid, signal.SIGKILL)  # the driver dies like a lost laptop or a preempted head
        killed_at = time.monotonic()
    finally:
        kill_group(first)  # and its local Ray with it
    try:
        t0 = time.monotonic()
        out = subprocess.run(search_cmd(data_dir, *args, "--resume", space=space), cwd=tmp_path,
                             capture_output=True, text=True, timeout=600, env=clean_env())
        resume_seconds = time.monotonic() - t0
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
        assert f"resuming {storage}/night: MLflow parent run {parent_id}" in out.stdout
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["parent_run_id"] == parent_id and summary["trials"] == 2
        all_runs = children_of(client, parent_id)
        # A trial that started as the driver died can be missing from Tune's last snapshot: Tune then runs a new
        # trial in its place, and the search closes the old trial's run as KILLED, tagged, never left RUNNING.
        orphans = [r for r in all_runs if r.data.tags.get("tune_ct.orphan")]
        assert all(r.info.status == "KILLED" for r in orphans)
        assert sorted(summary["orphan_child_runs"]) == sorted(r.info.run_id for r in orphans)
        runs = [r for r in all_runs if not r.data.tags.get("tune_ct.orphan")]
        by_trial = {}
        for r in runs:
            by_trial.setdefault(r.data.tags["tune_ct.trial_id"], []).append(r)
        assert len(runs) == 2 == len(by_trial), "exactly one child run per trial"
        assert all(r.info.status == "FINISHED" for r in runs)
        for trial_id, (run_id, end_time) in finished_before.items():
            (run,) = by_trial[trial_id]
            assert run.info.run_id == run_id
            steps = [m.step for m in client.get_metric_history(run_id, "val_macro_f1")]
            assert len(steps) == len(set(steps)), f"trial {trial_id} was re-run: steps {steps}"
        for runs_of_trial in by_trial.values():
            steps = [m.step for m in client.get_metric_history(runs_of_trial[0].info.run_id, "val_macro_f1")]
            assert sorted(steps) == list(range(1, len(steps) + 1)), steps  # resumed trial: no epoch logged twice
        assert client.get_run(parent_id).info.status == "FINISHED"
        assert client.get_run(parent_id).data.tags.get("tune_ct.resumed")
        study = optuna.load_study(study_name="night", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        check_study_tells_the_truth(study, client, summary, planned_epochs=yaml.safe_load(space.read_text())[
            "params"]["epochs"])
        print(f"\nkilled after {len(finished_before)} finished trial(s); resume finished the search in "
              f"{resume_seconds:.0f}s ({time.monotonic() - killed_at:.0f}s after the kill); trials lost 0, "
              f"duplicate child runs {len(runs) - len(by_trial)}, orphaned runs closed {len(orphans)}")
    finally:
        stop_process(server)


@pytest.mark.timeout(600)
def test_trial_that_had_finished_training_replays_its_last_report(tmp_path, data_dir):
    """A driver killed after a trial's last epoch but before Tune saw it finish restarts that trial on --resume.
    Its Train run resumes from the last checkpoint with nothing left to train; it must still report, or Tune stops
    the whole search ("Trial returned a result which did not include the specified metric", seen in CI)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from tune_ct.data.prepare import DataSettings, prepare
    from tune_ct.data.workdir import WorkFolder
    from tune_ct.model.checkpoint import METRICS_FILE
    from tune_ct.train.settings import TrialSettings
    from tune_ct.train.trial import train_worker

    data = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=12)
    prep = prepare(DataSettings(data, WorkFolder(tmp_path / "wd")))
    run = TrialSettings(subset_path=str(prep.trainval_path), cache_root=str(tmp_path / "wd" / "cache"),
                      storage_path=str(tmp_path / "storage"), experiment="replay")
    hp = {"backbone": "baseline_cnn", "image_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 8,
          "epochs": 2}

    def fit():
        return TorchTrainer(
            train_loop_per_worker=train_worker,
            train_loop_config={"hp": hp, "settings": vars(run)},
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name="trial-x", storage_path=run.storage_path),
        ).fit()

    ray.init(address="local", num_cpus=1)
    try:
        first = fit()
        second = fit()  # same name and storage: what a restarted trial does
    finally:
        ray.shutdown()
    assert first.metrics["epoch"] == 2 and not first.metrics.get("replayed")
    assert second.metrics["replayed"] is True and second.metrics["epoch"] == 2
    for key in ("val_macro_f1", "val_loss", "val_confusion_matrix", "train_loss"):
        assert second.metrics[key] == first.metrics[key], key  # the same epoch's numbers, not a new epoch
    with second.checkpoint.as_directory() as folder:  # with a checkpoint the search can pick and test
        assert (Path(folder) / "model.pt").exists() and (Path(folder) / METRICS_FILE).exists()
