#!/usr/bin/env python
"""Run the team's MLflow tracking server with small-head-node defaults, and check that one is healthy.

    python mlflow_server/serve.py start [--root DIR] [--port 5000] [--auth] ...   # foreground (systemd, tmux)
    python mlflow_server/serve.py check http://127.0.0.1:5000 [--timeout 60]      # exit 0 when healthy

Defaults, and why:
- one worker and no job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false): ~480 MB and ~4 s to start, instead
  of ~2.7 GB and 8-14 s, which matters on a head node that also runs Ray;
- SQLite under --root; PostgreSQL for a team via MLFLOW_BACKEND_STORE_URI (kept out of argv, so the database
  password never shows in `ps`);
- proxied artifacts (--artifacts-destination, a folder or s3://): trial workers and laptops talk HTTP to the
  server only and need no bucket credentials;
- bound to 127.0.0.1: reach it through `ssh -L 5000:127.0.0.1:5000 head`; pass --host 0.0.0.0 only behind a
  firewall or proxy you control;
- --auth turns on MLflow's basic-auth app; the admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD or
  --admin-password-file, never from the repo or the command line.

Only the standard library is used here, so the script runs with whatever Python has mlflow installed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

AUTH_INI = """[mlflow]
default_permission = {default_permission}
database_uri = {database_uri}
admin_username = {admin_username}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
"""


class ServerError(RuntimeError):
    pass


def mlflow_executable() -> str:
    """The mlflow next to this Python (a venv), else the one on PATH."""
    here = Path(sys.executable).with_name("mlflow")
    found = str(here) if here.exists() else shutil.which("mlflow")
    if not found:
        raise ServerError("mlflow is not installed for this Python: pip install mlflow (and psycopg2-binary for "
                          "PostgreSQL)")
    return found


def read_secret(file: Path | None, env_name: str) -> str | None:
    """A secret from a file (first line) or an environment variable; None when neither is set."""
    if file is not None:
        if not file.is_file():
            raise ServerError(f"{file}: password file not found")
        if file.stat().st_mode & 0o077:
            print(f"warning: {file} is readable by other users; chmod 600 it", file=sys.stderr)
        value = file.read_text().splitlines()[0].strip() if file.read_text().strip() else ""
        if not value:
            raise ServerError(f"{file}: password file is empty")
        return value
    return os.environ.get(env_name) or None


def build_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and environment for the options (no secret is ever put in argv)."""
    root = args.root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    backend = os.environ.get("MLFLOW_BACKEND_STORE_URI") or f"sqlite:///{root / 'mlflow.db'}"
    if backend.startswith("postgresql"):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise ServerError("MLFLOW_BACKEND_STORE_URI is PostgreSQL but psycopg2 is missing: "
                              "pip install psycopg2-binary") from None
    env["MLFLOW_BACKEND_STORE_URI"] = backend
    artifacts = args.artifacts_destination or str(root / "artifacts")
    cmd = [mlflow_executable(), "server", "--host", args.host, "--port", str(args.port), "--workers",
           str(args.workers), "--artifacts-destination", artifacts, "--serve-artifacts"]
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding MLflow to {args.host}: anyone who can reach that address can read and write "
              "runs; prefer 127.0.0.1 and SSH port-forwarding", file=sys.stderr)
    if args.auth:
        password = read_secret(args.admin_password_file, "MLFLOW_AUTH_ADMIN_PASSWORD")
        auth_db = root / "basic_auth.db"
        if password is None and not auth_db.exists():
            raise ServerError("--auth needs the admin password for the first start: set MLFLOW_AUTH_ADMIN_PASSWORD "
                              "or pass --admin-password-file FILE (chmod 600)")
        ini = root / "basic_auth.ini"
        ini.write_text(AUTH_INI.format(
            default_permission=args.default_permission, database_uri=f"sqlite:///{auth_db}",
            admin_username=os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"),
        ))
        ini.chmod(0o600)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        if password is not None:
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = password  # read once, on the first start, by the auth app
        # The auth app must sign its session cookies with a stable key.
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secret_key(root))
        cmd += ["--app-name", "basic-auth"]
    return cmd, env


def secret_key(root: Path) -> str:
    """A per-server random key kept in the server's root (mode 600), made on the first start."""
    path = root / ".flask_secret_key"
    if not path.exists():
        path.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
        path.chmod(0o600)
    return path.read_text().strip()


def health(uri: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_healthy(uri: str, timeout: float) -> float:
    """Seconds until `uri`/health answers 200; ServerError after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if health(uri):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise ServerError(f"{uri}/health did not answer within {timeout:g}s: is the server running "
                      "(python mlflow_server/serve.py start) and the port forwarded?")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mlflow_server/serve.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run the tracking server in the foreground")
    start.add_argument("--root", type=Path, default=Path("mlflow_data"),
                       help="folder for the SQLite store, local artifacts and auth files (default ./mlflow_data)")
    start.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: SSH-forward to it)")
    start.add_argument("--port", type=int, default=5000)
    start.add_argument("--workers", type=int, default=1, help="server worker processes (default 1: small head node)")
    start.add_argument("--artifacts-destination",
                       help="where proxied artifacts go: a folder or s3://bucket/prefix (default ROOT/artifacts)")
    start.add_argument("--auth", action="store_true", help="MLflow basic-auth: clients set MLFLOW_TRACKING_USERNAME"
                       " and MLFLOW_TRACKING_PASSWORD")
    start.add_argument("--admin-password-file", type=Path,
                       help="file holding the admin password (else $MLFLOW_AUTH_ADMIN_PASSWORD); first start only")
    start.add_argument("--default-permission", default="READ", choices=["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"],
                       help="what users get on experiments they did not create (default READ)")
    start.add_argument("--dry-run", action="store_true", help="print the command (no secrets) and exit")
    check = sub.add_parser("check", help="exit 0 when the server's /health answers")
    check.add_argument("uri", nargs="?", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    check.add_argument("--timeout", type=float, default=0.0, help="wait up to this many seconds for it (default 0)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "check":
            seconds = wait_healthy(args.uri, max(args.timeout, 0.1))
            print(json.dumps({"uri": args.uri, "healthy": True, "seconds": round(seconds, 1)}))
            return 0
        cmd, env = build_command(args)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if args.command == "check" else 2
    print(" ".join(cmd), flush=True)
    if args.dry_run:
        return 0
    os.execve(cmd[0], cmd, env)  # replace this process, so signals (systemd, Ctrl-C) reach the server directly
    return 0


if __name__ == "__main__":
    sys.exit(main())
