"""Decoded images cached as one uint8 memory-mapped array per (subset, image size, per-film preprocessing).

Trials never decode PNGs: they memory-map ``images.u8`` (N x S x S) and read ``index.json``. A cache is keyed
by the exact list of files, their pixel hashes, labels and splits, the image size and the preprocessing applied
to each film before resizing (equalisation, the crop to the lungs), so any change to either gives a new key. It is built in a temporary folder and renamed into place, under a file lock, so a crash
never leaves half a cache and several trials asking at once end with one good cache.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tune_ct.data.files import CLASSES, DataError, RejectedImage, decode_file, pixel_sha, resize
from tune_ct.data.manifest import progress_bar
from tune_ct.data.subsets import read_subset

@dataclass
class CachedImages:
    """A read-only view of one cache: pixels[i] is the image of files[i], with labels[i] and splits[i]."""

    path: Path
    pixels: np.ndarray  # uint8 memmap, N x S x S
    files: list[str]
    labels: np.ndarray  # int64 class indices into CLASSES
    splits: list[str]

    def indices(self, split: str) -> np.ndarray:
        return np.array([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)


@dataclass(frozen=True)
class PerFilm:
    """Preprocessing applied to every decoded film before it is resized; `key` names it in the cache key.
    `stats()` (optional) is written to the cache index, e.g. how often a crop fell back to the whole film."""

    key: str
    apply: Callable[[np.ndarray], np.ndarray]
    stats: Callable[[], dict] = field(default=lambda: {})


def cache_key(files: list[list[str]], size: int, per_film_key: str = "") -> str:
    digest = hashlib.sha256(f"size={size}\n".encode())
    if per_film_key:  # absent for plain resizing, so existing caches keep their keys
        digest.update(f"per_film={per_film_key}\n".encode())
    for file, label, split, sha in files:
        digest.update(f"{file}\0{label}\0{split}\0{sha}\n".encode())
    return digest.hexdigest()[:20]


def _open(folder: Path) -> CachedImages:
    index = json.loads((folder / "index.json").read_text())
    n, size = len(index["files"]), index["size"]
    expected = n * size * size
    actual = (folder / "images.u8").stat().st_size
    if actual != expected:  # cannot happen through open_or_build; guards against a hand-edited cache
        raise DataError(f"cache {folder} is damaged: images.u8 has {actual} bytes, expected {expected}; delete the folder")
    pixels = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=(n, size, size))
    labels = np.array([CLASSES.index(label) for label in index["labels"]], dtype=np.int64)
    touch_last_use(folder)
    return CachedImages(folder, pixels, index["files"], labels, index["splits"])


LAST_USE = ".last_use"  # touched each time a cache is opened: `python -m tune_ct.clean` removes unused ones


def touch_last_use(folder: Path) -> None:
    try:
        (folder / LAST_USE).touch()
    except OSError:  # a read-only cache folder is still usable
        pass


class DiskFullError(DataError):
    """A folder has too little free space for what must be written there; the message names both."""


def need_space(folder: Path, nbytes: int, what: str) -> None:
    """Raise DiskFullError, naming the folder, the space needed and what to do, unless `nbytes` fit there."""
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise DiskFullError(f"{folder}: {what} needs {nbytes / 2**20:.0f} MiB and the disk has {free / 2**20:.0f} "
                            "MiB free; free space there (`python -m tune_ct.clean` lists what tune_ct keeps), or "
                            "point --workdir at a larger disk")


def allocate(path: Path, nbytes: int, what: str) -> np.memmap:
    """A uint8 file of `nbytes` given its blocks before it is memory-mapped: a full disk is then an ENOSPC error
    here (DiskFullError), never a SIGBUS when a page of the map is first written."""
    with open(path, "wb") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, max(1, nbytes))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise DiskFullError(f"{path.parent.parent}: {what} needs {nbytes / 2**20:.0f} MiB and the disk ran out "
                                "while allocating it; free space there or point --workdir at a larger disk") from None
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=(nbytes,))


def sweep_leftovers(cache_root: Path) -> list[Path]:
    """Half-built caches of builds that died (killed, a full disk): their builder process is gone."""
    swept = []
    for tmp in cache_root.glob("*.building-*"):
        pid = tmp.name.split(".building-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            swept.append(tmp)
    return swept


def _build(folder: Path, data_root: Path, files: list[list[str]], size: int, workers: int,
           per_film: PerFilm | None) -> None:
    what, nbytes = f"the {size}px cache of {len(files)} films", len(files) * size * size
    need_space(folder.parent, nbytes, what)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"{folder.name}.building-{os.getpid()}-"))
    try:
        out = allocate(tmp / "images.u8", nbytes, what)
        out = out.reshape(len(files), size, size)

        def fill(i: int) -> None:
            file, sha = files[i][0], files[i][3]
            try:
                image, _ = decode_file(data_root / file)
            except (RejectedImage, OSError) as exc:
                raise DataError(f"cannot cache {data_root / file}: {exc}; re-run `python -m tune_ct.data`") from exc
            # The same pixel hash as the manifest: a file edited since then must not slip into training.
            if pixel_sha(image) != sha:
                raise DataError(f"{data_root / file} changed since the manifest was built; re-run "
                                "`python -m tune_ct.data` to update it (a changed test image is reported there)")
            out[i] = resize(per_film.apply(image) if per_film else image, size)

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(progress_bar(pool.map(fill, range(len(files)), chunksize=32), len(files),
                              f"caching films at {size}px"))
        out.flush()
        del out
        index = {
            "size": size,
            "files": [f[0] for f in files],
            "labels": [f[1] for f in files],
            "splits": [f[2] for f in files],
            "build_seconds": round(time.monotonic() - started, 3),
            "built_by_pid": os.getpid(),
            "per_film": {"key": per_film.key, **per_film.stats()} if per_film else None,
        }
        (tmp / "index.json").write_text(json.dumps(index))
        if folder.exists():  # a folder without index.json: not ours to trust (renamed in by hand?); replace it
            shutil.rmtree(folder)
        os.replace(tmp, folder)  # atomic: readers see no cache or a whole one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_or_build(subset_path: Path, size: int, cache_root: Path, workers: int | None = None,
                  per_film: PerFilm | None = None) -> CachedImages:
    """Open the cache for this subset, size and preprocessing, building it first if no process has yet."""
    subset = read_subset(subset_path)
    files = subset["files"]
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    folder = cache_root / f"{cache_key(files, size, per_film.key if per_film else '')}-{size}px"
    if (folder / "index.json").exists():
        return _open(folder)
    with open(cache_root / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the second builder waits here, then finds the cache ready
        sweep_leftovers(cache_root)
        if not (folder / "index.json").exists():
            _build(folder, Path(subset["data_root"]), files, size, workers or os.cpu_count() or 1, per_film)
    return _open(folder)
