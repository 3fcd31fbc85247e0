"""Up-front checks of the MLflow tracking URI: a search must not spend an hour of GPUs to find out at the first
log call that the server is down or rejects its credentials.

Credentials follow MLflow's own conventions: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (basic auth) or
MLFLOW_TRACKING_TOKEN (bearer). They are never accepted inside the URI, because the URI is logged (params, tags,
console) and a password in it would leak everywhere.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request


class TrackingError(RuntimeError):
    """The tracking server cannot be used; the message says what to do."""


def auth_headers(env: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    if env.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"}
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def check_tracking_uri(uri: str, timeout: float = 10.0) -> None:
    """Raise TrackingError unless an http(s) tracking server answers and accepts our credentials.

    Local stores (sqlite:, file paths) need no check: they are created on first use.
    """
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("http", "https"):
        return
    if parsed.username or parsed.password:
        raise TrackingError(
            f"tracking URI {redact(uri)} carries credentials: drop them from the URI and set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
        )
    base = uri.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=timeout) as r:
            r.read()
    except urllib.error.HTTPError as exc:
        raise TrackingError(f"MLflow server {uri} answered /health with HTTP {exc.code}: is it an MLflow "
                            "tracking server? (python mlflow_server/serve.py check URI)") from None
    except OSError as exc:
        raise TrackingError(
            f"MLflow server {uri} is unreachable ({getattr(exc, 'reason', exc)}): start it "
            "(python mlflow_server/serve.py start) or forward its port (ssh -L 5000:127.0.0.1:5000 HEAD), "
            "then retry"
        ) from None
    # An authenticated read: basic-auth servers answer /health without credentials but refuse this.
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers=auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            given = "the credentials given" if auth_headers() else "no credentials"
            raise TrackingError(
                f"MLflow server {uri} rejected {given} (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account on that server"
            ) from None
        if exc.code == 403:
            raise TrackingError(f"MLflow server {uri}: user {os.environ.get('MLFLOW_TRACKING_USERNAME')!r} may "
                                "not read experiments (HTTP 403): ask the server admin for EDIT permission") from None
        raise TrackingError(f"MLflow server {uri} failed a test request with HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise TrackingError(f"MLflow server {uri} failed a test request: {exc}") from None


def redact(uri: str) -> str:
    """The URI with any user:password@ replaced, safe to print or log."""
    parsed = urllib.parse.urlsplit(uri)
    if not (parsed.username or parsed.password):
        return uri
    host = parsed.hostname or ""
    if parsed.port:
        host += f":{parsed.port}"
    return urllib.parse.urlunsplit((parsed.scheme, f"***@{host}", parsed.path, parsed.query, parsed.fragment))
