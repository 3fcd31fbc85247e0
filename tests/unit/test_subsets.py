"""Subset files (tune_ct/data/subsets.py): the file lists a stage may read."""

from __future__ import annotations

import json

import pytest

from tune_ct.data.files import DataError
from tune_ct.data.manifest import Entry
from tune_ct.data.workdir import WorkFolder
from tune_ct.data.subsets import SUBSET_VERSION, read_subset, subset_path, write_subset


def entry(i: int, label: str, split: str) -> Entry:
    return Entry(file=f"{label}/images/{i}.png", label=label, sha=f"sha{i}", phash="0" * 64, size=100 + i,
                 mtime_ns=i, split=split)


def test_write_then_read_round_trip(tmp_path):
    entries = [entry(1, "COVID", "train"), entry(2, "Normal", "val"), entry(3, "Viral Pneumonia", "train")]
    path = tmp_path / "subsets" / "deep" / "abc.trainval.json"  # parent folders are made
    written = write_subset(path, tmp_path / "data", entries, "abc")
    back = read_subset(path)
    assert back == written
    assert back["version"] == SUBSET_VERSION and back["manifest_hash"] == "abc"
    assert back["data_root"] == str(tmp_path / "data")
    assert back["files"] == [["COVID/images/1.png", "COVID", "train", "sha1"],
                             ["Normal/images/2.png", "Normal", "val", "sha2"],
                             ["Viral Pneumonia/images/3.png", "Viral Pneumonia", "train", "sha3"]]
    assert sorted(p.name for p in path.parent.iterdir()) == ["abc.trainval.json"]  # no temporary file left


def test_rewrite_replaces_the_list(tmp_path):
    path = tmp_path / "s.json"
    write_subset(path, tmp_path, [entry(1, "COVID", "test")], "h")
    write_subset(path, tmp_path, [], "h2")
    assert read_subset(path)["files"] == [] and read_subset(path)["manifest_hash"] == "h2"


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_other_version_is_an_error_naming_the_file(tmp_path, version):
    path = tmp_path / "old.test.json"
    path.write_text(json.dumps({"version": version, "files": []} if version is not None else {"files": []}))
    with pytest.raises(DataError) as err:
        read_subset(path)
    assert str(path) in str(err.value) and f"expected {SUBSET_VERSION}" in str(err.value)
    assert "python -m tune_ct.data" in str(err.value)


def test_missing_or_corrupt_file_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="cannot read subset file .*missing.json"):
        read_subset(tmp_path / "missing.json")
    cut = tmp_path / "cut.json"
    cut.write_text('{"version": 1, "files": [[')
    with pytest.raises(DataError, match="cannot read subset file .*cut.json"):
        read_subset(cut)


def test_subset_path_names_the_sample_and_seed_only_when_limited(tmp_path):
    work = WorkFolder(tmp_path)
    assert subset_path(work, "h123", None, 7, "trainval") == tmp_path / "subsets" / "h123.trainval.json"
    assert subset_path(work, "h123", 16, 7, "test") == tmp_path / "subsets" / "h123-limit16-seed7.test.json"
    # Two samples never share a file; the full set does not depend on the seed.
    assert subset_path(work, "h", 16, 0, "test") != subset_path(work, "h", 16, 1, "test")
    assert subset_path(work, "h", None, 0, "test") == subset_path(work, "h", None, 1, "test")
