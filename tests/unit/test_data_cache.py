"""The image cache: right pixels, one build when two processes ask at once, nothing half-written on failure."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from helpers.films import make_small_dataset
from tune_ct.data.cache import open_or_build
from tune_ct.data.workdir import WorkFolder
from tune_ct.data.prepare import DataSettings, prepare
from tune_ct.data.subsets import read_subset
from tune_ct.data.files import CLASSES, DataError, decode_file, resize

SIZE = 160  # not the stored 224, so the build really resizes


def quiet(*_args) -> None:
    pass


def _build_in_child(subset: str, cache_root: str, barrier, results) -> None:
    barrier.wait()  # both processes call open_or_build at the same moment
    cached = open_or_build(Path(subset), SIZE, Path(cache_root), workers=2)
    index = json.loads((cached.path / "index.json").read_text())
    results.put((str(cached.path), index["built_by_pid"], int(np.asarray(cached.pixels, dtype=np.int64).sum())))


def test_two_processes_building_one_cache_end_with_one_good_cache(data_dir, tmp_path):
    root = make_small_dataset(data_dir, tmp_path / "ds", per_class=12)
    prep = prepare(DataSettings(root, WorkFolder(tmp_path / "work")))
    cache_root = tmp_path / "cache"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(prep.trainval_path), str(cache_root), barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (folder_a, builder_a, sum_a), (folder_b, builder_b, sum_b) = out
    assert folder_a == folder_b and sum_a == sum_b
    assert builder_a == builder_b  # the second process waited on the lock and opened the first one's cache
    assert builder_a in {p.pid for p in procs}
    assert [p.name for p in cache_root.iterdir() if not p.name.startswith(".")] == [Path(folder_a).name]

    cached = open_or_build(prep.trainval_path, SIZE, cache_root)
    subset = read_subset(prep.trainval_path)
    assert cached.files == [f[0] for f in subset["files"]] and cached.pixels.shape == (len(cached.files), SIZE, SIZE)
    for i, (file, label, split, _sha) in enumerate(subset["files"]):
        expected = resize(decode_file(root / file)[0], SIZE)
        assert np.array_equal(cached.pixels[i], expected), file
        assert CLASSES[cached.labels[i]] == label and cached.splits[i] == split
    assert len(cached.indices("train")) + len(cached.indices("val")) == len(cached.files)
    assert "test" not in cached.splits  # trials never see the locked test split


def test_a_failed_build_leaves_no_cache_behind(data_dir, tmp_path):
    root = make_small_dataset(data_dir, tmp_path / "ds", per_class=4)
    prep = prepare(DataSettings(root, WorkFolder(tmp_path / "work")))
    cache_root = tmp_path / "cache"
    victim = prep.trainval_entries[-1].file
    (root / victim).write_bytes((root / victim).read_bytes()[:300])  # truncated after the manifest was built
    with pytest.raises(DataError, match=victim):
        open_or_build(prep.trainval_path, SIZE, cache_root)
    assert [p.name for p in cache_root.iterdir() if not p.name.startswith(".")] == []

    other = prep.trainval_entries[0].file
    (root / victim).write_bytes((data_dir / victim).read_bytes())  # restored
    (root / other).write_bytes((data_dir / "Normal" / "images" / "Normal-999.png").read_bytes())  # swapped content
    with pytest.raises(DataError, match=f"{other} changed since the manifest"):
        open_or_build(prep.trainval_path, SIZE, cache_root)
    assert [p.name for p in cache_root.iterdir() if not p.name.startswith(".")] == []
