"""Every kind of bad or unusual file in a dataset folder is rejected, converted or ignored, and counted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.films import make_small_dataset, write_dicom
from tune_ct.commands import data
from tune_ct.data.workdir import WorkFolder
from tune_ct.data.prepare import DataSettings, prepare
from tune_ct.data.files import DataError, decode_file, scan


def save(img: Image.Image, path: Path, **kw) -> str:
    img.save(path, **kw)
    return path.name


@pytest.fixture
def messy(data_dir, tmp_path):
    """3 real images per class, plus one file of every awkward kind, plus stray files."""
    root = make_small_dataset(data_dir, tmp_path / "messy", per_class=3)
    real = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    covid = root / "COVID" / "images"
    src = Path(data_dir / "COVID" / "images" / "COVID-100.png")
    gray = np.asarray(Image.open(src))
    base = Image.fromarray(gray)
    png = src.read_bytes()

    (covid / "zero.png").write_bytes(b"")
    (covid / "truncated.png").write_bytes(png[: len(png) // 2])
    (covid / "notes.png").write_text("patient list, not an image\n" * 20)
    (covid / "tiny.png").write_bytes(b"")  # replaced below
    save(Image.fromarray(gray[:8, :8]), covid / "tiny.png")

    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    rgba[:40, :40, 3] = 0  # a transparent corner hiding white pixels
    rgba[:40, :40, :3] = 255
    converted = {
        "COVID/images/" + save(Image.fromarray((gray.astype(np.uint16) * 16)), covid / "sixteen.png"): "16bit-window-to-8bit",
        "COVID/images/" + save(base.convert("RGB"), covid / "rgb.png"): "rgb-to-gray",
        "COVID/images/" + save(Image.fromarray(rgba, "RGBA"), covid / "rgba.png"): "rgba-to-gray",
        "COVID/images/" + save(base.convert("P"), covid / "palette.png"): "palette-to-gray",
        "COVID/images/" + save(base.convert("CMYK"), covid / "cmyk.jpg", quality=95): "jpeg+cmyk-to-gray",
        "COVID/images/" + save(base, covid / "gray.jpeg", quality=90): "jpeg",
    }
    p12 = gray.astype(np.uint16) * 16
    for name, kw, conversion in [
        ("mono2.dcm", {"window": (2048, 4096)}, "dicom-voi-lut"),
        ("mono1.dcm", {"photometric": "MONOCHROME1", "window": (2048, 4096)}, "dicom-voi-lut+invert-monochrome1"),
        ("nowindow.dcm", {}, "dicom-minmax-window"),
        ("nopreamble.dcm", {"window": (2048, 4096), "preamble": False}, "dicom-voi-lut"),
    ]:
        pixels = 4095 - p12 if kw.get("photometric") == "MONOCHROME1" else p12
        write_dicom(covid / name, pixels, **kw)
        converted[f"COVID/images/{name}"] = conversion

    ignored = [".DS_Store", "COVID/images/.DS_Store", "COVID/images/._COVID-1.png", "Normal/images/Thumbs.db",
               "COVID.metadata.xlsx", "Viral Pneumonia/masks/Viral Pneumonia-1.png", "Other/images/x.png",
               "Normal/images/readme.txt"]
    for rel in ignored:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png if rel.endswith(".png") else b"stray")
    rejected = {"COVID/images/zero.png": "empty file", "COVID/images/truncated.png": "truncated",
                "COVID/images/notes.png": "not an image", "COVID/images/tiny.png": "too small"}
    return root, real, converted, rejected, ignored, gray


def test_every_file_is_used_converted_rejected_or_ignored(messy, tmp_path, capsys):
    root, real, converted, rejected, ignored, _ = messy
    out = tmp_path / "summary.json"
    assert data.main(["--data", str(root), "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    text = capsys.readouterr().out

    on_disk = sum(len(files) for _, _, files in os.walk(root))
    assert s["files_total"] == on_disk == len(real) + len(converted) + len(rejected) + len(ignored)
    assert s["files_used"] == len(real) + len(converted)
    assert {r["file"]: r["reason"] for r in s["rejected"]}.keys() == rejected.keys()
    for r in s["rejected"]:
        assert rejected[r["file"]] in r["reason"], r
    assert {c["file"]: c["conversion"] for c in s["converted"]} == converted
    assert sorted(s["ignored"]) == sorted(ignored)
    used = sorted(f for split in s["splits"].values() for f in split)
    assert used == sorted(real + list(converted))  # every good file, once, in exactly one split
    assert "4 rejected" in text and "COVID/images/truncated.png" in text and "masks/" in text


def test_conversions_keep_the_picture(messy):
    root, _, _, _, _, gray = messy
    covid = root / "COVID" / "images"
    for name in ("rgb.png", "palette.png", "mono2.dcm", "mono1.dcm", "nopreamble.dcm", "cmyk.jpg", "gray.jpeg"):
        pixels, _ = decode_file(covid / name)
        assert pixels.dtype == np.uint8 and pixels.shape == gray.shape
        # MONOCHROME1 must come out inverted back to the PNG's polarity; JPEG allows small error.
        assert np.abs(pixels.astype(int) - gray).mean() < 1.5, name
    rgba, _ = decode_file(covid / "rgba.png")
    assert (rgba[:40, :40] == 0).all() and (rgba[40:, 40:] == gray[40:, 40:]).all()
    sixteen, _ = decode_file(covid / "sixteen.png")  # windowed to its own range: same order, full contrast
    assert sixteen.min() == 0 and sixteen.max() == 255
    assert np.corrcoef(sixteen.ravel(), gray.ravel())[0, 1] > 0.999


def test_no_images_or_an_empty_class_is_an_error_naming_the_path(data_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "COVID" / "masks").mkdir(parents=True)
    with pytest.raises(DataError, match=f"no images found in {empty}"):
        scan(empty)
    assert data.main(["--data", str(empty), "--workdir", str(tmp_path / "w")]) == 2
    assert str(empty) in capsys.readouterr().err

    root = make_small_dataset(data_dir, tmp_path / "three", per_class=2)
    shutil.rmtree(root / "Lung_Opacity")
    with pytest.raises(DataError, match="Lung_Opacity.*" + str(root / "Lung_Opacity" / "images")):
        scan(root)


def test_a_class_whose_files_are_all_rejected_is_an_error(data_dir, tmp_path):
    root = make_small_dataset(data_dir, tmp_path / "bad", per_class=2)
    for f in (root / "Normal" / "images").iterdir():
        f.write_bytes(b"")
    with pytest.raises(DataError, match="Normal"):
        prepare(DataSettings(root, WorkFolder(tmp_path / "work")))
