"""Duplicate groups stay on one side of the split, and the test split is locked across runs."""

from __future__ import annotations

import logging

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.films import make_small_dataset
from tune_ct.data import manifest as mf
from tune_ct.data.files import CLASSES


def quiet(*_args) -> None:
    pass


def near_copies(src: Path, out_dir: Path, stem: str) -> list[str]:
    """Re-encoded, resized and brightness-shifted copies of one real film, as collections often hold."""
    img = Image.open(src).convert("L")
    pixels = np.asarray(img).astype(np.int16)
    names = [f"{stem}-jpeg.jpg", f"{stem}-resized.png", f"{stem}-brighter.png", f"{stem}-copy.png"]
    img.save(out_dir / names[0], quality=70)
    img.resize((299, 299), Image.BICUBIC).save(out_dir / names[1])
    Image.fromarray(np.clip(pixels + 18, 0, 255).astype(np.uint8)).save(out_dir / names[2])
    img.convert("RGB").save(out_dir / names[3])  # pixel-identical after decoding: an exact duplicate
    return names


def by_file(manifest: mf.Manifest) -> dict[str, mf.Entry]:
    return {e.file: e for e in manifest.entries}


def test_near_copies_form_one_group_in_one_split(data_dir, tmp_path):
    root = make_small_dataset(data_dir, tmp_path / "ds", per_class=8)
    families = {}
    for label in ("COVID", "Normal", "Viral Pneumonia"):
        folder = root / label / "images"
        original = sorted(folder.iterdir())[0]
        families[label] = [original.name] + near_copies(original, folder, "copy-of-" + original.stem)
    manifest, _ = mf.build(root, tmp_path / "m.json")
    entries = by_file(manifest)
    groups = set()
    for label, names in families.items():
        members = [entries[f"{label}/images/{n}"] for n in names]
        assert len({e.group for e in members}) == 1, [(e.file, e.group) for e in members]
        assert len({e.split for e in members}) == 1
        assert members[0].sha == members[-1].sha  # the RGB re-save decodes to the same pixels
        groups.add(members[0].group)
        # Nothing else joined: distinct real films of the fixture are not merged by the threshold.
        assert sum(e.group == members[0].group for e in manifest.entries) == len(names)
    assert len(groups) == 3
    assert [len(g) for g in mf.duplicate_groups(manifest)] == [5, 5, 5]
    assert len(mf.exact_duplicate_sets(manifest)) == 3


def test_split_survives_rerun_and_added_images(data_dir, tmp_path):
    root = make_small_dataset(data_dir, tmp_path / "ds", per_class=10)
    path = tmp_path / "m.json"
    first, report = mf.build(root, path, mf.BuildOptions(seed=3))
    assert report.new_files == 40 and {e.split for e in first.entries} == set(mf.SPLITS)
    again, report = mf.build(root, path, mf.BuildOptions(seed=99))  # a locked manifest keeps its own seed
    assert report.new_files == 0 and again.hash == first.hash

    make_small_dataset(data_dir, root, per_class=3, start=10)  # 12 new real images
    test_file = next(e for e in first.entries if e.split == "test")
    near_copies(root / test_file.file, (root / test_file.file).parent, "late-copy")
    grown, report = mf.build(root, path)
    assert report.new_files == 16 and not report.test_missing and not report.test_changed
    after = by_file(grown)
    for e in first.entries:
        assert after[e.file].split == e.split, e.file
    late = [e for e in grown.entries if "late-copy" in e.file]
    assert late and all(e.split == "test" for e in late)  # a new copy of a test film joins its test group
    for g in mf.duplicate_groups(grown):
        assert len({e.split for e in g}) == 1


def test_changed_or_missing_test_image_is_reported_on_every_run(data_dir, tmp_path, caplog):
    """Reported as a warning through logging (the commands show tune_ct's warnings on stderr)."""
    root = make_small_dataset(data_dir, tmp_path / "ds", per_class=8)
    path = tmp_path / "m.json"
    first, _ = mf.build(root, path)
    tests = [e for e in first.entries if e.split == "test"]
    changed, missing = tests[0], tests[1]
    other = data_dir / "Normal" / "images" / "Normal-999.png"
    shutil.copyfile(other, root / changed.file)  # different pixels under the same name
    (root / missing.file).unlink()
    caplog.clear()

    with caplog.at_level(logging.WARNING, logger="tune_ct"):
        second, report = mf.build(root, path)
    assert report.test_changed == [changed.file] and report.test_missing == [missing.file]
    err = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "locked test split" in err and changed.file in err and missing.file in err
    assert by_file(second)[changed.file].split == "test"  # a changed test file never moves to training

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tune_ct"):
        third, report = mf.build(root, path)  # the lock remembers: still loud on the next run
    assert not report.test_changed and not report.test_missing
    assert {x["file"]: x["reason"] for x in third.lost_test} == {changed.file: "changed", missing.file: "missing"}
    assert any("locked test split" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_split_is_stratified_by_class_and_origin(data_dir, tmp_path):
    root = make_small_dataset(data_dir, tmp_path / "ds", per_class=20)
    sources = tmp_path / "sources.csv"
    with sources.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "origin"])
        for label in CLASSES:
            for i, f in enumerate(sorted((root / label / "images").iterdir())):
                w.writerow([f"{label}/images/{f.name}", label, "hospital-a" if i % 2 else "hospital-b"])
    manifest, _ = mf.build(root, tmp_path / "m.json", mf.BuildOptions(sources=sources))
    assert {e.origin for e in manifest.entries} == {"hospital-a", "hospital-b"}
    for label in CLASSES:
        for origin in ("hospital-a", "hospital-b"):
            stratum = [e for e in manifest.entries if e.label == label and e.origin == origin]
            counts = {s: sum(e.split == s for e in stratum) for s in mf.SPLITS}
            assert counts["train"] >= 6 and counts["val"] >= 1 and counts["test"] >= 1, (label, origin, counts)


def test_shared_sources_csv_names_every_shared_image(data_dir, sources_csv):
    origins = mf.read_sources(sources_csv)
    images = [p for p in data_dir.glob("*/images/*.png")]
    assert len(images) == 9452
    assert all(origins.get(p.relative_to(data_dir).as_posix(), "unknown") != "unknown" for p in images)


def test_manifest_write_is_atomic(data_dir, tmp_path):
    root = make_small_dataset(data_dir, tmp_path / "ds", per_class=2)
    path = tmp_path / "m.json"
    manifest, _ = mf.build(root, path)
    good = path.read_text()
    manifest.entries[-1].mtime_ns = object()  # not JSON-serialisable: the write fails half-way through
    with pytest.raises(TypeError):
        mf.save(manifest, path)
    assert path.read_text() == good  # the old manifest is untouched and no temp file is left
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m.json")) == ["m.json", "m.json.lock"]
