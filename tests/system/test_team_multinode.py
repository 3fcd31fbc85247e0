"""`--address`: searches on a real multi-node Ray cluster (separate `ray start` processes on this host, token auth
on), tracked by a real MLflow server; and a worker node killed mid-trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers.films import make_small_dataset
from helpers.servers import start_mlflow_server, stop_process
from mlflow.tracking import MlflowClient

from helpers.processes import command_lines
from helpers.ray_cluster import start_local_cluster

# System tests: each starts a real multi-node Ray cluster.
from helpers.search_cli import REPO
# The Ray actor that trains, per runner: the Tune trial actor itself, or the Ray Train worker it starts.
TRAINING_ACTOR = {"actor": "ImplicitFunc", "train": "RayTrainWorker"}


def space_with_runner(tmp_path: Path, name: str, runner: str) -> Path:
    space = yaml.safe_load((REPO / "tests/spaces" / name).read_text())
    space["search"]["runner"] = runner
    path = tmp_path / f"{runner}-{name}"
    path.write_text(yaml.safe_dump(space))
    return path


WORKERS = ("worker1", "worker2", "worker3")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head with no CPU (only GCS and the dashboard) + three 1-CPU workers, shared by this module's tests: each
    node-kill test (they come last) loses one node and still leaves two, so no node is ever replaced (a replaced
    node that never re-joined once cost CI 768 s); every process stopped afterwards."""
    c = start_local_cluster(tmp_path_factory.mktemp("cluster"), head_cpus=0, head_resources={"head": 1}, timeout=300)
    try:
        for name in WORKERS:
            c.add_worker(name, 1, {name: 1}, timeout=240)
        yield c
    finally:
        c.stop()
        time.sleep(2)
        assert not c.leftovers(), f"Ray processes left running: {c.leftovers()}"


@pytest.fixture
def tracking(tmp_path):
    proc, uri = start_mlflow_server(tmp_path / "mlflow")
    yield uri
    stop_process(proc)


def epochs_logged(client: MlflowClient) -> list[int]:
    exps = client.search_experiments(filter_string="name = 'multinode'")
    runs = client.search_runs([exps[0].experiment_id], "tags.`tune_ct.trial_id` != ''") if exps else []
    return [m.step for r in runs for m in client.get_metric_history(r.info.run_id, "val_macro_f1")]


def node_training(cluster, runner: str):
    """The worker node whose raylet started the running training process (ray::ImplicitFunc for the actor runner,
    ray::RayTrainWorker for Ray Train; a worker is the raylet's child, in a process group of its own), or None."""
    title = f"ray::{TRAINING_ACTOR[runner]}"
    parents = {parent_pid(pid) for pid, cmd in command_lines().items() if cmd.startswith(title)}
    return next((n for n in cluster.nodes if n.name in WORKERS and n.raylet_pid() in parents), None)


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def children(client: MlflowClient, parent_id: str):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def search(cluster, tmp_path, data, uri, space, *extra, wait=True):
    env = {k: v for k, v in cluster.env.items() if not k.startswith("MLFLOW_TRACKING_")}
    cmd = [sys.executable, "-m", "tune_ct.search", "--address", cluster.address, "--data", str(data), "--space",
           str(space if isinstance(space, Path) else REPO / "tests/spaces" / space), "--tracking-uri", uri, "--storage", str(tmp_path / "storage"),
           "--experiment", "multinode", "--summary", str(tmp_path / "summary.json"), *extra]
    log = open(tmp_path / "search.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    return finish(proc, tmp_path) if wait else proc


def finish(proc, tmp_path, timeout=600):
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 0, (tmp_path / "search.log").read_text()[-6000:]
    return json.loads((tmp_path / "summary.json").read_text())


@pytest.mark.timeout(300)
def test_cluster_without_dashboard_is_refused_before_any_trial(tmp_path, data_dir):
    """Without the dashboard's state API Ray Train never frees a stopped trial's resources and later trials wait
    until they time out (seen on a GPU node); the search must refuse such a cluster up front."""
    data = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=8)
    c = start_local_cluster(tmp_path / "cluster", head_cpus=1, dashboard=False, timeout=240)
    try:
        env = {k: v for k, v in c.env.items() if not k.startswith("MLFLOW_TRACKING_")}
        proc = subprocess.run(
            [sys.executable, "-m", "tune_ct.search", "--address", c.address, "--data", str(data), "--space",
             str(REPO / "tests/spaces/tiny.yaml"), "--storage", str(tmp_path / "storage")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    finally:
        c.stop()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "dashboard is not running on the cluster at " + c.address in proc.stderr
    assert "ray[default]" in proc.stderr
    # Refused before anything was recorded: no MLflow run, no Tune experiment.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(experiments) and not (tmp_path / "storage").exists()


@pytest.mark.timeout(900)
def test_search_on_two_node_cluster_uses_both_nodes(tmp_path, data_dir, cluster, tracking):
    data = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=24)
    t0 = time.monotonic()
    summary = search(cluster, tmp_path, data, tracking, "tiny.yaml", "--num-samples", "2", "--max-concurrent", "2",
                     "--limit-per-class", "16")
    client = MlflowClient(tracking)
    runs = children(client, summary["parent_run_id"])
    assert len(runs) == 2 == len({r.data.tags["tune_ct.trial_id"] for r in runs})
    names = cluster.node_ids()
    used = {names.get(a["node_id"], "?") for a in cluster.actors(TRAINING_ACTOR["actor"])}
    assert len(used & set(WORKERS)) >= 2, f"trial actors ran on {used}"
    print(f"\n2 trials on {sorted(used)} in {time.monotonic() - t0:.0f}s")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("runner", ["actor", "train"])
def test_lost_worker_node_trial_resumes_from_checkpoint_on_the_other(tmp_path, data_dir, cluster, tracking, runner):
    data = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=40)
    space = space_with_runner(tmp_path, "team_long.yaml", runner)
    proc = search(cluster, tmp_path, data, tracking, space, "--limit-per-class", "40", wait=False)
    client = MlflowClient(tracking)
    try:
        # Wait for the first epoch (a checkpoint exists), then kill the raylet of the node running the trial, found
        # from /proc at once (Ray's state API takes seconds: a fast machine had finished the trial by then).
        node, killed_epoch, deadline = None, 0, time.monotonic() + 480
        while node is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            epochs = epochs_logged(client)
            node = node_training(cluster, runner) if epochs else None
            killed_epoch = max(epochs, default=0)
        assert node is not None and node.name in WORKERS, (tmp_path / "search.log").read_text()[-4000:]
        os.kill(node.raylet_pid(), signal.SIGKILL)
        killed_at, victim = time.monotonic(), node.name
        job = next(a["job_id"] for a in cluster.actors(TRAINING_ACTOR[runner]) if
                   cluster.node_ids().get(a["node_id"]) == victim)  # the search's job, from the actor it lost
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    try:
        summary = finish(proc, tmp_path)
        recovered = time.monotonic() - killed_at
    finally:
        node.stop()  # the rest of the killed node; the next runner's test still has two live workers
    runs = children(client, summary["parent_run_id"])
    assert len(runs) == 1 and summary["trials"] == 1 and summary["trials_errored"] == 0
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.tags["epochs_run"] == "10"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1"))
    assert steps == list(range(1, 11)), f"each epoch once, in the one child run: {steps}"
    names = cluster.node_ids()
    used = {names.get(a["node_id"], "?") for a in cluster.actors(TRAINING_ACTOR[runner]) if a["job_id"] == job}
    survivors = (used & set(WORKERS)) - {victim}
    assert survivors, f"the trial did not move off {victim}: it trained on {used}"
    print(f"\nkilled {victim}'s raylet after epoch {killed_epoch}; trial finished on {sorted(survivors)} "
          f"{recovered:.0f}s later; trials lost 0, child runs {len(runs)}; epochs trained twice: "
          f"{run.data.tags.get('epochs_rerun', 'none')}")
