"""mlflow_server/serve.py for real: SQLite and PostgreSQL stores, proxied artifacts, basic auth, health check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers.servers import free_port, stop_process
from mlflow.tracking import MlflowClient

# System tests: each starts a real MLflow server (and one a PostgreSQL cluster).
from helpers.search_cli import REPO
SERVE = REPO / "mlflow_server/serve.py"
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/15/bin"),
             key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def serve(root: Path, *extra: str, env: dict | None = None, port: int | None = None):
    """Start the launcher as its own process group; returns (process, uri, seconds to healthy)."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = open(root.parent / f"serve-{port}.log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(SERVE), "start", "--root", str(root), "--port", str(port), *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=env or dict(os.environ),
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    check = subprocess.run([sys.executable, str(SERVE), "check", uri, "--timeout", "120"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        stop_process(proc)
        raise AssertionError(check.stderr + (root.parent / f"serve-{port}.log").read_text()[-3000:])
    return proc, uri, time.monotonic() - t0


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the server forks uvicorn)."""
    out = subprocess.run(["ps", "-o", "rss=", "-g", str(os.getpgid(pid))], capture_output=True, text=True).stdout
    return sum(int(x) for x in out.split()) / 1024


def log_a_run(uri: str, tmp: Path) -> str:
    client = MlflowClient(uri)
    exp = client.create_experiment(f"smoke-{time.time_ns()}")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 1.0)
    (tmp / "note.txt").write_text("artifact through the server")
    client.log_artifact(run.info.run_id, str(tmp / "note.txt"))
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]
    return run.info.run_id


@pytest.mark.timeout(240)
def test_sqlite_server_small_footprint_and_proxied_artifacts(tmp_path):
    root = tmp_path / "server"
    proc, uri, seconds = serve(root)
    try:
        print(f"\nSQLite server healthy in {seconds:.1f}s, {rss_mb(proc.pid):.0f} MB")
        assert rss_mb(proc.pid) < 1500  # the default 4-worker server with job runner takes ~2.7 GB
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "--host 127.0.0.1" in cmdline and "--workers 1" in cmdline
        log_a_run(uri, tmp_path)
        # Proxied: the file sits in the server's artifact folder, the client never touched that path.
        assert list((root / "artifacts").rglob("note.txt"))
    finally:
        stop_process(proc)
    down = subprocess.run([sys.executable, str(SERVE), "check", uri], capture_output=True, text=True)
    assert down.returncode == 1 and "did not answer" in down.stderr


@pytest.mark.timeout(240)
def test_basic_auth_password_from_file_never_in_argv_or_repo(tmp_path):
    password = "pw-" + os.urandom(6).hex()
    pw_file = tmp_path / "admin_password"
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}

    no_pw = subprocess.run([sys.executable, str(SERVE), "start", "--root", str(tmp_path / "x"), "--auth"],
                           capture_output=True, text=True, env=env)
    assert no_pw.returncode == 2 and "MLFLOW_AUTH_ADMIN_PASSWORD" in no_pw.stderr

    root = tmp_path / "server"
    proc, uri, seconds = serve(root, "--auth", "--admin-password-file", str(pw_file), env=env)
    try:
        print(f"\nbasic-auth server healthy in {seconds:.1f}s")
        for pid in subprocess.run(["pgrep", "-g", str(os.getpgid(proc.pid))], capture_output=True,
                                  text=True).stdout.split():
            assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert password not in (root / "basic_auth.ini").read_text()
        assert oct((root / "basic_auth.ini").stat().st_mode & 0o777) == "0o600"

        from mlflow.exceptions import MlflowException

        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        with pytest.raises(MlflowException):
            MlflowClient(uri).search_experiments()
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password)
        try:
            log_a_run(uri, tmp_path)
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME")
            os.environ.pop("MLFLOW_TRACKING_PASSWORD")
    finally:
        stop_process(proc)
    assert password not in (tmp_path / f"serve-{uri.rsplit(':', 1)[1]}.log").read_text()


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1 (Debian packages), run as the postgres user."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server not installed: apt-get install -y postgresql")
    folder = Path(tempfile.mkdtemp(prefix="tune_ct_pg_", dir="/tmp"))
    password = "pg-" + os.urandom(6).hex()
    (folder / "pw").write_text(password)
    shutil.chown(folder, "postgres")
    shutil.chown(folder / "pw", "postgres")
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "scram-sha-256",
                    f"--pwfile={folder / 'pw'}"], check=True, capture_output=True, timeout=120)
    try:
        subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60",
                        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder}",
                        "start"], check=True, capture_output=True, timeout=90)
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE mlflow"],
                       check=True, capture_output=True, timeout=60, env={**os.environ, "PGPASSWORD": password})
        yield f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{port}/mlflow", password
    finally:
        subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(600)
def test_postgresql_backend(tmp_path, postgres, dev_films):
    pytest.importorskip("psycopg2", reason="pip install psycopg2-binary")
    uri_with_password, password = postgres
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri_with_password}
    proc, uri, seconds = serve(tmp_path / "server", env=env)
    try:
        print(f"\nPostgreSQL-backed server healthy in {seconds:.1f}s")
        assert password.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()  # via env, not argv
        run_id = log_a_run(uri, tmp_path)
        assert not (tmp_path / "server" / "mlflow.db").exists()  # really not SQLite
        # A tiny real search tracked by the PostgreSQL-backed server.
        search = subprocess.run(
            [sys.executable, "-m", "tune_ct.search", "--data", str(dev_films), "--space",
             str(REPO / "tests/spaces/tiny.yaml"), "--limit-per-class", "16", "--num-samples", "1",
             "--max-concurrent", "1", "--tracking-uri", uri, "--experiment", "pg", "--register-name", "pg-model",
             "--summary", str(tmp_path / "summary.json")],
            cwd=tmp_path, capture_output=True, text=True, timeout=420)
        assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
        parent_id = json.loads((tmp_path / "summary.json").read_text())["parent_run_id"]
    finally:
        stop_process(proc)
    # The run is in PostgreSQL itself.
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", uri_with_password.rsplit(":", 1)[1].split("/")[0], "-U",
                          "postgres", "-d", "mlflow", "-tAc",
                          f"SELECT run_uuid, status FROM runs WHERE run_uuid IN ('{run_id}', '{parent_id}') "
                          "ORDER BY start_time"],
                         capture_output=True, text=True, env={**os.environ, "PGPASSWORD": password})
    assert out.stdout.split() == [f"{run_id}|RUNNING", f"{parent_id}|FINISHED"], out.stdout + out.stderr
