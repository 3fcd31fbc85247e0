"""A full disk is a clear stop, not a crash: a real search on a real full filesystem (a small tmpfs the test
mounts; CI runs as root), once where the image caches are built (the work folder) and once where checkpoints go
(the Tune storage). Each time: exit status 2 with one message naming the folder and what to do, no partial cache,
no run left RUNNING, no Ray process of the search left."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers.films import make_small_dataset
from helpers.processes import naming
from helpers.search_cli import SPACES


@contextmanager
def small_tmpfs(folder: Path, size: str):
    """A tmpfs of `size` at `folder`, unmounted afterwards."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    folder.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def ray_processes(ray_dir: Path) -> list[str]:
    return naming(str(ray_dir))


def search(tmp_path: Path, data: Path, space: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-full-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env["RAY_TMPDIR"] = str(ray_dir)
    proc = subprocess.run([sys.executable, "-m", "tune_ct.search", "--data", str(data), "--space", str(space),
                           "--limit-per-class", "16", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                           "--experiment", "full", *extra], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    return proc, ray_dir


def check_clean_stop(proc: subprocess.CompletedProcess, tmp_path: Path, ray_dir: Path, folder: Path) -> None:
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and str(folder) in error[0] and "free space" in error[0], proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == error[0]  # the search's last word (Ray may log a trial's error)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("full").experiment_id])
    assert runs and not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    deadline = time.monotonic() + 30
    while ray_processes(ray_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes(ray_dir)
    shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.mark.timeout(600)
def test_a_full_work_folder_stops_the_cache_build_with_a_message_and_no_partial_cache(tmp_path, data_dir):
    data = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=20)
    raw = yaml.safe_load((SPACES / "tiny.yaml").read_text())
    raw["params"]["image_size"] = 256  # ~54 train/val films x 256 x 256: over 3 MiB of cache, on a 2 MiB disk
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    with small_tmpfs(tmp_path / "work", "2m") as work:
        proc, ray_dir = search(tmp_path, data, tmp_path / "space.yaml", "--workdir", str(work))
        check_clean_stop(proc, tmp_path, ray_dir, work / "cache")
        needed, free = map(int, re.search(r"the 256px cache of \d+ films needs (\d+) MiB and the disk has (\d+) MiB free",
                                          proc.stderr).groups())
        assert needed > free
        assert not list((work / "cache").glob("*.building-*")) and not list((work / "cache").glob("*px"))


@pytest.mark.timeout(600)
def test_a_full_tune_storage_stops_the_search_at_the_first_checkpoint(tmp_path, data_dir):
    data = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=20)
    with small_tmpfs(tmp_path / "storage", "600k") as storage:
        proc, ray_dir = search(tmp_path, data, SPACES / "tiny.yaml", "--storage", str(storage), "--num-samples", "2",
                               "--name", "full")
        check_clean_stop(proc, tmp_path, ray_dir, storage)
        assert "--resume --name full" in proc.stderr


@pytest.mark.timeout(900)
def test_a_full_mlflow_artifact_store_stops_the_search_and_resume_finishes_it(tmp_path, data_dir):
    """The experiment's artifact store (a tmpfs with 8 KB left) fills when the first trial's run is closed with
    its confusion matrix: the run is still closed, the search stops with the store named; once space is freed,
    --resume tests and registers the winner without training again."""
    data = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=20)
    with small_tmpfs(tmp_path / "artifacts", "4m") as store:
        ballast = store / "ballast"
        ballast.write_bytes(b"\0" * (4 * 2**20 - 8 * 2**10))
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        client.create_experiment("full", artifact_location=str(store))
        proc, ray_dir = search(tmp_path, data, SPACES / "tiny.yaml", "--num-samples", "2", "--name", "full",
                               "--storage", str(tmp_path / "ray_results"))
        check_clean_stop(proc, tmp_path, ray_dir, store)
        assert "MLflow could not store a trial's records" in proc.stderr and "--resume --name full" in proc.stderr
        ballast.unlink()
        proc, ray_dir = search(tmp_path, data, SPACES / "tiny.yaml", "--num-samples", "2", "--name", "full",
                               "--storage", str(tmp_path / "ray_results"), "--resume")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert client.get_registered_model("cxr-classifier").latest_versions
        runs = client.search_runs([client.get_experiment_by_name("full").experiment_id])
        assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
        shutil.rmtree(ray_dir, ignore_errors=True)
