"""Real servers for tests on 127.0.0.1: a free port, an `mlflow server` with small-footprint settings, and the
clean stop of a process group."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int | None = None, timeout: float = 90.0):
    """A real tracking server (SQLite + proxied artifacts), small-footprint settings, bound to 127.0.0.1."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(proc, f"{uri}/health", root / "server.log", timeout)
    except RuntimeError:
        proc.kill()
        raise
    return proc, uri


def wait_until_answering(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    """Until `url` answers 200 (an event, not a fixed sleep); the server's log when it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
