"""Ray's storage (--storage: a folder or s3://) and the checkpoints on it."""

from __future__ import annotations

import shutil
from pathlib import Path

from tune_ct.data.workdir import WorkFolder


def resolve_storage(storage: str | None) -> str:
    """An absolute folder, or a URI as given (default ./ray_results)."""
    storage = storage or "ray_results"
    return storage if "://" in storage else str(Path(storage).resolve())


def storage_filesystem(storage: str):
    """The pyarrow filesystem of --storage (checkpoint paths Ray reports are relative to it: no s3:// prefix)."""
    import pyarrow.fs

    if "://" not in storage:
        return pyarrow.fs.LocalFileSystem()
    return pyarrow.fs.FileSystem.from_uri(storage)[0]


def checkpoint_exists(filesystem, path: str) -> bool:
    import pyarrow.fs

    return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def fetch_checkpoint(filesystem, path: str, work: WorkFolder) -> Path:
    """A local folder holding the checkpoint: the path itself on local storage, else a download into the work
    folder."""
    import pyarrow.fs
    import ray.train

    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        return Path(path)
    local = work.fetched_checkpoint(Path(path).name)
    if not local.exists():
        # Download beside it and rename, so an interrupted download is never taken for a checkpoint later.
        partial = local.with_name(local.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        ray.train.Checkpoint(path, filesystem=filesystem).to_directory(str(partial))
        partial.rename(local)
    return local
