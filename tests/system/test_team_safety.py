"""A search against a basic-auth tracking server that drops out mid-search: trials keep running, the queued
log calls reach the server once it is back, and no password or Ray token shows up in any log, param, tag,
artifact or stored file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers.films import make_small_dataset
from helpers.servers import free_port, stop_process
from mlflow.tracking import MlflowClient

from helpers.processes import naming

# System test: a basic-auth MLflow server, a local Ray cluster and a search.
from helpers.search_cli import REPO
SERVE = REPO / "mlflow_server/serve.py"


def start_server(root: Path, port: int, pw_file: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen([sys.executable, str(SERVE), "start", "--root", str(root), "--port", str(port), "--auth",
                             "--admin-password-file", str(pw_file)], stdout=open(root.parent / "server.log", "a"),
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)
    check = subprocess.run([sys.executable, str(SERVE), "check", f"http://127.0.0.1:{port}", "--timeout", "150"])
    if check.returncode:
        stop_process(proc)
        raise AssertionError((root.parent / "server.log").read_text()[-3000:])
    return proc


def files_containing(folder: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits += [f"{path}: {n[:6]!r}..." for n in needles if n in data]
    return hits


@pytest.mark.timeout(1200)
def test_server_dropout_is_retried_and_no_secret_leaks(tmp_path, data_dir):
    password = "pw-" + os.urandom(8).hex()
    pw_file = tmp_path / "admin_password"
    pw_file.write_text(password)
    pw_file.chmod(0o600)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    root = tmp_path / "mlflow"
    server = start_server(root, port, pw_file)
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-safety-", dir="/tmp"))  # the search's own Ray: its logs are here
    data = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=24)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "RAY_TMPDIR": str(ray_dir),
           "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # fail fast: the TrialTracker's own queue does the retrying
    summary_path = tmp_path / "summary.json"
    search = subprocess.Popen(
        [sys.executable, "-m", "tune_ct.search", "--data", str(data), "--space",
         str(REPO / "tests/spaces/tiny.yaml"), "--tracking-uri", uri, "--storage", str(tmp_path / "storage"),
         "--experiment", "safety", "--num-samples", "2", "--max-concurrent", "1", "--limit-per-class", "16",
         "--summary", str(summary_path)],
        cwd=tmp_path, stdout=open(tmp_path / "search.log", "w"), stderr=subprocess.STDOUT, env=env,
        start_new_session=True)
    try:
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password)
        client = MlflowClient(uri)
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline and search.poll() is None:  # the first epoch of the first trial is in
            time.sleep(1)
            exps = client.search_experiments(filter_string="name = 'safety'")
            runs = client.search_runs([exps[0].experiment_id], "tags.`tune_ct.trial_id` != ''") if exps else []
            if any(client.get_metric_history(r.info.run_id, "val_macro_f1") for r in runs):
                break
        assert search.poll() is None, (tmp_path / "search.log").read_text()[-4000:]
        stop_process(server)  # the tracking server goes away mid-search ...
        # ... until log calls have failed twice: the first call, then a retry (an event, not a fixed sleep) ...
        deadline = time.monotonic() + 300
        while (tmp_path / "search.log").read_text().count("MLflow logging failed") < 2 and search.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(1)
        server = start_server(root, port, pw_file)  # ... and comes back on the same address
        assert search.wait(timeout=600) == 0, (tmp_path / "search.log").read_text()[-6000:]

        summary = json.loads(summary_path.read_text())
        log = (tmp_path / "search.log").read_text()
        assert "MLflow logging failed" in log, "the outage did not hit any log call: test did not test"
        assert summary["tracking_unlogged"] == [] and summary["tracking_delayed_calls"] > 0
        parent = client.get_run(summary["parent_run_id"])
        children = client.search_runs([parent.info.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        for child in children:
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_macro_f1"))
            assert steps == list(range(1, int(child.data.tags["epochs_run"]) + 1)), steps  # nothing lost

        # No secret anywhere: params, tags, artifacts, console, Ray's logs, Tune/Train storage, server files.
        token_file = Path.home() / ".ray" / "auth_token"  # the local Ray's token, when token auth made one
        token = token_file.read_text().strip() if token_file.is_file() else password
        needles = [password.encode(), token.encode()]
        for run in [parent, *children]:
            text = json.dumps([run.data.params, run.data.tags])
            assert password not in text and token not in text
            out = tmp_path / "artifacts" / run.info.run_id
            client.download_artifacts(run.info.run_id, "", str(out))
            assert not files_containing(out, needles)
        assert password not in log and token not in log
        hits = files_containing(ray_dir, needles) + files_containing(tmp_path / "storage", needles)
        hits += [h for h in files_containing(root, needles)]
        assert not hits, hits
        print(f"\noutage and restart: {summary['tracking_delayed_calls']} log call(s) delivered late, "
              f"{len(summary['tracking_unlogged'])} lost; no secret in {len(children) + 1} runs, logs or storage")
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
            search.wait()
        stop_process(server)
        assert not naming(str(ray_dir)), naming(str(ray_dir))  # the search shut its Ray down
        shutil.rmtree(ray_dir, ignore_errors=True)
