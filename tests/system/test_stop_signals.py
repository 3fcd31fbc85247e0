"""Every way of being told to stop is a clean stop. One real search is stopped three times, by the real signals:
SIGINT to its process group (Ctrl-C in a terminal), then SIGTERM to the driver's pid alone (Slurm, Kubernetes,
systemd, `timeout`), then SIGHUP to the driver's pid (the terminal went away); each time it is resumed with the
command it printed, and the last resume finishes it. After each stop: exit status 128 + the signal's number, no
child run RUNNING, the parent run KILLED and tagged interrupted, nothing tested or registered, no Ray process of
the search left; at the end every trial's values are in the Optuna study."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers.films import make_small_dataset
from helpers.processes import naming
from helpers.search_checks import check_study_tells_the_truth
from helpers.search_cli import SPACES
from tune_ct.track import tags

REGISTER = "stopped-model"


def space(folder: Path) -> Path:
    """One trial long enough to be stopped three times (actor runner, 36 epochs at 224 px: a quiet fast machine ran
    a whole 2 x 8-epoch search, ASHA stopping one trial, before a second search could be started beside it, and
    later all 24 epochs of one trial at 128 px before the SIGINT reached it)."""
    raw = yaml.safe_load((SPACES / "tiny.yaml").read_text())
    raw["search"].update(runner="actor", max_concurrent=1, num_samples=1)
    raw["params"].update(epochs=36, image_size=224)
    (folder / "space.yaml").write_text(yaml.safe_dump(raw))
    return folder / "space.yaml"


def ray_processes(ray_dir: Path) -> list[str]:
    return naming(str(ray_dir))


EPOCH_ROW = re.compile(r"^[0-9a-f]{8}\s+baseline_cnn\s+\d+\s+\S+\s+(\d+)/\d+\s", re.MULTILINE)


def last_epoch(folder: Path) -> int:
    """The highest epoch the searches' console tables in `folder` have shown (a row per reported epoch)."""
    return max([int(m.group(1)) for log in folder.glob("*.log") for m in EPOCH_ROW.finditer(log.read_text())] or [0])


def as_in_a_terminal() -> None:
    """The search starts as from a terminal: SIGINT and SIGHUP not ignored. (A test run started in the background,
    `nohup ./.ci/run &`, passes them on ignored, and the search keeps an ignored SIGINT ignored, by convention.)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def run_until_a_new_epoch(command: list[str], folder: Path, env: dict, client: MlflowClient, log: Path,
                          alongside=None):
    """Start the search and return it once its console shows an epoch later than any before (it is then
    mid-trial); `alongside(proc)` runs as soon as it has started. The console, not MLflow, is watched: a quiet
    machine trained a whole trial while the test's first MLflow query of a new store was still running."""
    before = last_epoch(folder)
    proc = subprocess.Popen(command, cwd=folder, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=env, preexec_fn=as_in_a_terminal)
    if alongside is not None:
        alongside(proc)
    deadline = time.monotonic() + 480
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if last_epoch(folder) > before:
            return proc
    pytest.fail(f"the search logged no new epoch (exit {proc.poll()}): {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, sig: int, whole_group: bool) -> int:
    try:
        os.killpg(proc.pid, sig) if whole_group else os.kill(proc.pid, sig)
        return proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def check_stopped_cleanly(client: MlflowClient, rc: int, sig: int, log: Path, ray_dir: Path) -> list[str]:
    """The checks every stop must pass; returns the resume command it printed."""
    out = log.read_text()
    assert rc == 128 + sig, out[-3000:]
    parent = client.search_runs([client.get_experiment_by_name("stops").experiment_id],
                                f"tags.`{tags.ROLE}` = '{tags.ROLE_SEARCH}'")[0]
    assert parent.info.status == "KILLED" and parent.data.tags.get(tags.INTERRUPTED)
    assert "test_macro_f1" not in parent.data.metrics  # the test split was not touched
    assert not client.search_registered_models(f"name = '{REGISTER}'")  # nothing registered
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert children and not [c.info.run_id for c in children if c.info.status == "RUNNING"]
    deadline = time.monotonic() + 30  # Ray's processes go as ray.shutdown() returns; allow them to exit
    while ray_processes(ray_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes(ray_dir), ray_processes(ray_dir)
    assert f"search stopped ({signal.Signals(sig).name})" in out
    command = shlex.split(out.split("Finish it with:\n")[1].splitlines()[0])
    assert command[:3] == ["python", "-m", "tune_ct.search"] and command[-1] == "--resume"
    return [sys.executable, *command[1:]]


def start_a_second_search_beside(first: subprocess.Popen, command: list[str], folder: Path, env: dict):
    """Once the first search holds the folder's stores, a second search in the same folder (started alongside,
    while the first runs on)."""
    lock, deadline = folder / "mlflow.db.search-lock", time.monotonic() + 120
    while not (lock.exists() and f'"pid": {first.pid},' in lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return subprocess.Popen([*command[:-4], "--name", "second"], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def check_the_second_was_refused(second: subprocess.Popen, folder: Path, first: int) -> None:
    """Two searches in one folder would share ./mlflow.db and ./optuna.db: the second is refused at its start,
    naming the first, and touches nothing."""
    out, err = second.communicate(timeout=120)
    assert second.returncode == 2, out[-2000:] + err[-2000:]
    assert "is in use by another search" in err and f"pid {first}," in err
    assert not (folder / "ray_results" / "second").exists()


@pytest.mark.timeout(1500)
def test_sigint_sigterm_and_sighup_each_stop_cleanly_and_the_printed_command_finishes(tmp_path, data_dir):
    data = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=24)
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-stops-", dir="/tmp"))  # short: Ray's socket paths must fit
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env["RAY_TMPDIR"] = str(ray_dir)
    client = MlflowClient(db, registry_uri=db)
    command = [sys.executable, "-m", "tune_ct.search", "--data", str(data), "--space", str(space(tmp_path)),
               "--limit-per-class", "16", "--experiment", "stops", "--tracking-uri", db, "--name", "night",
               "--register-name", REGISTER, "--summary", str(tmp_path / "summary.json")]
    try:
        for sig, whole_group in ((signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGHUP, False)):
            log, second = tmp_path / f"{signal.Signals(sig).name}.log", []
            alongside = (lambda first: second.append(start_a_second_search_beside(first, command, tmp_path, env))) \
                if sig == signal.SIGINT else None
            proc = run_until_a_new_epoch(command, tmp_path, env, client, log, alongside)
            rc, first_pid = stop(proc, sig, whole_group), proc.pid
            for refused in second:
                check_the_second_was_refused(refused, tmp_path, first_pid)
            command = check_stopped_cleanly(client, rc, sig, log, ray_dir)
        finished = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and summary["registered_version"] is not None
    children = [client.get_run(r) for r in summary["child_run_ids"]]
    assert len(children) == 1 and all(c.info.status == "FINISHED" for c in children)
    # Every trial's values are in the study: each epoch, across the three stops, once; one Optuna trial per trial.
    study = optuna.load_study(study_name="night", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    check_study_tells_the_truth(study, client, summary, planned_epochs=24)
