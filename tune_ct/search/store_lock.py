"""One search at a time on a local SQLite store: two searches started in one folder share ./mlflow.db and
./optuna.db, and SQLite serialises their writers; under load one of them dies mid-search on "database is
locked". The second search is refused at the start instead, with a message naming the first. A server store
(MLflow server, PostgreSQL) takes any number of searches and needs no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path


class StoreBusyError(RuntimeError):
    """Another search holds the store; the message names it and says what to do."""


def sqlite_files(*urls: str | None) -> list[Path]:
    """The local SQLite files among MLflow's and Optuna's store URLs."""
    prefix = "sqlite:///"
    return sorted({Path(u[len(prefix):]).resolve() for u in urls if u and u.startswith(prefix)
                   and u != prefix + ":memory:"})


@contextmanager
def exclusive(db: Path, argv: tuple[str, ...]) -> Iterator[None]:
    """Hold `<db>.search-lock` for the block, or raise StoreBusyError naming the search that holds it."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".search-lock"), "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "{}"
            raise StoreBusyError(f"{db} is in use by another search ({describe(json.loads(holder))}): SQLite takes "
                                 "one search at a time; wait for it, start this one in another folder, or track "
                                 "both on a server (mlflow_server/serve.py; --optuna-storage "
                                 "postgresql+psycopg2://...)") from None
        fh.truncate(0)
        fh.write(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": argv}))
        fh.flush()
        yield


def describe(holder: dict) -> str:
    args = " ".join(holder.get("argv", []))[:200]
    return f"pid {holder.get('pid', '?')}, started {holder.get('started', '?')}: python -m tune_ct.search {args}"


@contextmanager
def one_search_per_store(tracking_uri: str, optuna_url: str | None, argv: tuple[str, ...]) -> Iterator[None]:
    with ExitStack() as stack:
        for db in sqlite_files(tracking_uri, optuna_url):
            stack.enter_context(exclusive(db, argv))
        yield
