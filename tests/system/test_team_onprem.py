"""`ray up cluster-onprem.yaml` for real: Ray's local provider over SSH to a throw-away sshd on 127.0.0.1, a tiny
search submitted with `ray exec`, then `ray down`, which must really stop Ray.

The shipped file is used as it is except for what names real machines (IPs, SSH user and key) and its `pip install`
line: the remote "home" links the test's own virtual environment, because installing torch again would take the
whole CI budget. Every other setup, start and stop command runs as shipped.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers.processes import command_lines
from helpers.servers import free_port, stop_process
from mlflow.tracking import MlflowClient

# System test: a throw-away sshd, `ray up` and a search on the cluster it starts.
from helpers.search_cli import REPO
SSHD = Path("/usr/sbin/sshd")
# Ray's SSH runner always dials port 22; the cluster's own ports (GCS 6379, dashboard 8265, MLflow 5000 in the
# shipped file) are moved to free ones, so another Ray or MLflow on this machine neither blocks nor meets this test.
SHIPPED_PORTS = {"gcs": 6379, "dashboard": 8265, "mlflow": 5000}
RAY = str(Path(sys.executable).with_name("ray"))


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def ray_processes(gcs_port: int) -> list[str]:
    """This cluster's Ray processes: those that name its GCS port."""
    return [f"{pid} {cmd[:120]}" for pid, cmd in command_lines().items()
            if ("/raylet " in f"{cmd} " or "/gcs_server " in f"{cmd} " or "ray/dashboard/dashboard.py" in cmd)
            and str(gcs_port) in cmd]


@pytest.fixture
def sshd(tmp_path):
    """sshd on 127.0.0.1:22, key-only, with a throw-away key and HOME (a fresh user's /etc/skel files)."""
    if not SSHD.exists() or not shutil.which("rsync"):
        pytest.skip("needs openssh-server and rsync: .ci/run installs them (apt-get install openssh-server rsync)")
    if not port_free(22):
        pytest.skip("127.0.0.1:22 is in use: Ray's SSH runner needs the test's own sshd there")
    folder, home = tmp_path / "sshd", tmp_path / "home"
    folder.mkdir()
    shutil.copytree("/etc/skel", home)
    for name in ("client_key", "host_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    shutil.copyfile(folder / "client_key.pub", folder / "authorized_keys")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    (folder / "sshd_config").write_text("\n".join([
        "ListenAddress 127.0.0.1", "Port 22", f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
        f"PidFile {folder / 'sshd.pid'}", f"SetEnv HOME={home}", "",
    ]))
    log = open(folder / "sshd.log", "w")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(folder / "sshd_config")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(22, 30)
        (home / "venv").symlink_to(sys.prefix)  # the test's environment stands in for `pip install -e ~/tune_ct`
        yield folder / "client_key", home
    finally:
        stop_process(proc)


def onprem_config(tmp_path: Path, key: Path, ports: dict[str, int]) -> Path:
    """The shipped file for a one-node cluster on 127.0.0.1, on `ports` instead of the shipped ones."""
    cfg = yaml.safe_load((REPO / "cluster-onprem.yaml").read_text())
    cfg["cluster_name"] = f"tune-ct-test-{os.getpid()}"
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cfg["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(key)}
    cfg["setup_commands"] = [c for c in cfg["setup_commands"] if "pip install" not in c]
    moved = {f"--port={SHIPPED_PORTS['gcs']}": f"--port={ports['gcs']} --dashboard-port={ports['dashboard']}",
             f"127.0.0.1:{SHIPPED_PORTS['mlflow']}": f"127.0.0.1:{ports['mlflow']}",
             "start --root ~/mlflow_data": f"start --root ~/mlflow_data --port {ports['mlflow']}"}
    commands = []
    for command in cfg["head_start_ray_commands"]:
        for old, new in moved.items():
            command = command.replace(old, new)
        commands.append(command)
    assert commands != cfg["head_start_ray_commands"], "the shipped file's ports moved: update SHIPPED_PORTS"
    cfg["head_start_ray_commands"] = commands
    path = tmp_path / "cluster-onprem-test.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def ray_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    proc = subprocess.run([RAY, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"ray {args[0]}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def kill_leftovers(home: Path) -> None:
    """Last resort after a failure: the MLflow server the head started and any Ray process."""
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=60)
    for pid, cmd in command_lines().items():
        if str(home) in cmd:  # the MLflow server started with --root ~/mlflow_data, and its workers (same group)
            try:
                group = os.getpgid(pid)
                if group != os.getpgid(0):  # it was started over SSH, never in pytest's own group
                    os.killpg(group, signal.SIGKILL)
            except OSError:
                pass  # already gone


@pytest.mark.timeout(900)
def test_ray_up_onprem_search_and_ray_down(tmp_path, sshd, dev_films):
    key, home = sshd
    if not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, timeout=60)
    ports = {name: free_port() for name in SHIPPED_PORTS}
    config = onprem_config(tmp_path, key, ports)
    mlflow_uri = f"http://127.0.0.1:{ports['mlflow']}"
    try:
        started = time.monotonic()
        ray_cli("up", "-y", "--no-config-cache", str(config), timeout=300)
        up_seconds = time.monotonic() - started
        assert (home / "tune_ct" / "tune_ct" / "search" / "pipeline.py").is_file()  # the file mount reached the node
        assert not (home / "tune_ct" / ".venv").exists()  # rsync_exclude kept the local venv out
        assert ray_processes(ports["gcs"]), "ray up exited 0 but started no Ray"
        assert (home / ".local" / "bin" / "ray").is_symlink()  # `ray` on the SSH user's non-interactive PATH

        # Token auth is on: the status and the search go through it.
        ray_cli("exec", str(config), "RAY_AUTH_MODE=token ~/venv/bin/ray status", timeout=120)
        search = (f"cd ~/tune_ct && RAY_AUTH_MODE=token ~/venv/bin/python -m tune_ct.search --address auto "
                  f"--data {dev_films} --space tests/spaces/tiny.yaml --limit-per-class 16 --num-samples 1 "
                  f"--max-concurrent 1 --tracking-uri {mlflow_uri} --storage ~/ray_results "
                  "--workdir ~/tune_ct_work --experiment onprem --summary ~/summary.json")
        ray_cli("exec", str(config), search, timeout=480)
        summary = json.loads((home / "summary.json").read_text())
        assert summary["trials"] == 1 and summary["trials_errored"] == 0
        assert summary["test_metrics"]["split"] == "test"
        # Tracked by the server the head's start commands launched (data under the node's home).
        parent = MlflowClient(mlflow_uri).get_run(summary["parent_run_id"])
        assert parent.info.status == "FINISHED" and (home / "mlflow_data").is_dir()

        ray_cli("down", "-y", str(config), timeout=180)
        deadline = time.monotonic() + 30
        while ray_processes(ports["gcs"]) and time.monotonic() < deadline:
            time.sleep(1)
        assert not ray_processes(ports["gcs"]), f"`ray down` exited 0 but Ray still runs: {ray_processes(ports['gcs'])}"
        print(f"\nray up (local provider, loopback sshd) took {up_seconds:.1f}s")
    finally:
        kill_leftovers(home)
        for state in Path("/tmp/ray").glob(f"cluster-tune-ct-test-{os.getpid()}.*"):  # the local provider state
            state.unlink(missing_ok=True)
