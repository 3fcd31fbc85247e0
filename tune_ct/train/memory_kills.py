"""Trials whose process Ray's memory monitor killed: retried as Tune's failure policy says, then failed.

Ray Tune 2.60 cannot go on after the memory monitor kills a trial's actor (with either runner: Ray kills the Tune
trial actor too). The actor task fails with OutOfMemoryError, which Tune's actor manager treats as neither an actor
nor a task error, so `Tuner.fit` raises ("Caught unexpected exception") after stopping every running trial. The
search therefore resumes itself from Tune's last snapshot, as --resume does (each unfinished trial restarts from
its last checkpoint), and counts the kill as a failure of the trial that was killed: a trial killed more times
than the failure policy retries fails at its next start with Ray's reason, so it ends ERROR (FAIL in the study,
FAILED in MLflow) and the search goes on.

Which trial was killed: each trial writes which Ray actor runs it, and Ray's error names the actors it killed.
The records live in the search's Tune storage (KillBook), not in a Ray actor: since Ray 2.56 the monitor kills
several workers at once, the search's own small actors among them, and the records must outlast a --resume.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

KILLED_ACTOR = re.compile(r"Selected to kill: \(Actor\(([0-9a-f]+)\)")


class KilledForMemory(RuntimeError):
    """A trial that Ray's memory monitor killed more times than its failure policy retries."""


@dataclass(frozen=True)
class KillBook:
    """<storage>/<search>/memory_kills/: actors/<actor id> holds the trial it ran, kills/<trial id>.json the
    reasons Ray gave each time it killed that trial."""

    storage: str  # --storage (a folder or a URI)
    search: str  # the Tune experiment's name

    def _fs(self):
        from tune_ct.train.storage import storage_filesystem

        root = self.storage.split("://", 1)[-1].rstrip("/")
        return storage_filesystem(self.storage), f"{root}/{self.search}/memory_kills"

    def _read(self, name: str) -> str | None:
        import pyarrow.fs

        fs, root = self._fs()
        path = f"{root}/{name}"
        if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            return None
        with fs.open_input_stream(path) as f:
            return f.read().decode()

    def _write(self, name: str, text: str) -> None:
        fs, root = self._fs()
        fs.create_dir(f"{root}/{name}".rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(f"{root}/{name}") as f:
            f.write(text.encode())

    def started(self, trial_id: str, actor_id: str) -> None:
        self._write(f"actors/{actor_id}", trial_id)

    def kills(self, trial_id: str) -> list[str]:
        return json.loads(self._read(f"kills/{trial_id}.json") or "[]")

    def killed(self, actor_ids: list[str], reason: str) -> list[str]:
        """The trials that ran in `actor_ids`, each with one more kill on record."""
        victims = sorted({t for a in actor_ids if (t := self._read(f"actors/{a}"))})
        for trial_id in victims:
            self._write(f"kills/{trial_id}.json", json.dumps(self.kills(trial_id) + [reason]))
        return victims


def memory_kill(exc: BaseException):
    """Ray's OutOfMemoryError behind `exc` (Tune wraps it in a RuntimeError), or None."""
    from ray.exceptions import OutOfMemoryError

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OutOfMemoryError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def record_kill(book: KillBook, error) -> list[str]:
    """The trials whose actors Ray killed (named in its error), each with one more kill on record."""
    text = str(error).strip()
    reason = text.splitlines()[0][:300] if text else "killed by Ray's memory monitor"
    return book.killed(KILLED_ACTOR.findall(text), reason)


def with_kill_record(fn, retries: int):
    """The trial function `fn`, which first records which actor runs it, and fails at once when the trial was
    killed for memory more than `retries` times (same name and signature, so Tune names trials as before)."""

    @functools.wraps(fn)
    def trial(config, settings, **kwargs):
        import ray
        import ray.tune

        book, trial_id = KillBook(settings.storage_path, settings.experiment), ray.tune.get_context().get_trial_id()
        kills = book.kills(trial_id)
        if len(kills) > retries:
            raise KilledForMemory(
                f"Ray's memory monitor killed this trial's process {len(kills)} times (a trial is retried {retries} "
                f"time(s)): it needs more memory than the node has free. Use a smaller batch_size or image_size, "
                f"fewer trials at once (search.max_concurrent) or nodes with more memory. Ray said: {kills[-1]}")
        book.started(trial_id, ray.get_runtime_context().get_actor_id())
        return fn(config, settings=settings, **kwargs)

    return trial
