"""Stage 1: find the image files of a dataset folder and decode them to 8-bit grayscale.

Layout (Kaggle COVID-19 Radiography Database): ``<class>/images/<file>``; ``<class>/masks/`` holds lung
masks, which are never used for training and are reported as ignored. Every other file is either an
image we use (possibly after a counted conversion), a rejected image (with the reason), or ignored.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

CLASSES: tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}
DATA_ENV = "TUNE_CT_DATA"


class DataError(ValueError):
    """The dataset folder cannot be used at all (missing, empty, a class without images)."""


class RejectedImage(ValueError):
    """One file cannot be decoded; the message is the reason shown in the summary."""


def _fold(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


_CLASS_BY_FOLDED = {_fold(c): c for c in CLASSES}


def class_for_folder(name: str) -> str | None:
    """Map a folder name to one of CLASSES, ignoring case and separators ('viral_pneumonia', 'lung opacity')."""
    return _CLASS_BY_FOLDED.get(_fold(name))


@dataclass
class Scan:
    root: Path
    images: list[tuple[str, str]] = field(default_factory=list)  # (path relative to root, class)
    ignored: list[str] = field(default_factory=list)


def resolve_data_dir(data: str | os.PathLike | None) -> Path:
    """The dataset folder from --data or TUNE_CT_DATA, checked to exist."""
    value = data if data else os.environ.get(DATA_ENV)
    if not value:
        raise DataError(f"no dataset folder given: pass --data DIR or set {DATA_ENV}")
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist or is not a folder (from --data/{DATA_ENV})")
    return root


def scan(root: Path) -> Scan:
    """List every file under root as a class image or as ignored; errors when nothing usable is there."""
    result = Scan(root=root)
    found: dict[str, int] = {c: 0 for c in CLASSES}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        parts = rel_dir.parts
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            label = class_for_folder(parts[0]) if parts else None
            is_image_dir = len(parts) == 2 and parts[1].lower() == "images"
            if label and is_image_dir and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                result.images.append((rel, label))
                found[label] += 1
            else:
                result.ignored.append(rel)
    if not result.images:
        raise DataError(
            f"no images found in {root}: expected <class>/images/*.png for classes {', '.join(CLASSES)} "
            "(the Kaggle 'COVID-19 Radiography Database' layout)"
        )
    missing = [c for c, n in found.items() if n == 0]
    if missing:
        raise DataError(f"no images for class(es) {', '.join(missing)} in {root}: expected {missing[0]}/images/*.png")
    return result


def _window_to_uint8(pixels: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    pixels = pixels.astype(np.float64)
    low = float(np.min(pixels)) if low is None else low
    high = float(np.max(pixels)) if high is None else high
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    scaled = (np.clip(pixels, low, high) - low) / (high - low)
    return np.round(scaled * 255.0).astype(np.uint8)


def _decode_dicom(data: bytes) -> tuple[np.ndarray, str]:
    import pydicom
    from pydicom.pixels import apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files
        raise RejectedImage(f"unreadable DICOM: {exc}") from exc
    if pixels.ndim != 2:
        raise RejectedImage(f"DICOM with {pixels.ndim} dimensions; expected one 2-D grayscale frame")
    windowed = apply_voi_lut(pixels, ds)
    image = _window_to_uint8(windowed)
    conversion = "dicom-voi-lut"
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        image = 255 - image
        conversion += "+invert-monochrome1"
    return image, conversion


def decode(data: bytes, name: str = "") -> tuple[np.ndarray, str | None]:
    """Decode file bytes to a 2-D uint8 array. Returns (pixels, conversion or None); raises RejectedImage."""
    if not data:
        raise RejectedImage("empty file (0 bytes)")
    if data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom")):
        return _decode_dicom(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode, fmt = img.mode, img.format
            if mode == "L":
                return np.asarray(img, dtype=np.uint8), None if fmt == "PNG" else f"{fmt.lower()}"
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                return _window_to_uint8(np.asarray(img)), f"{mode}-window-to-8bit"
            if mode == "CMYK":
                return np.asarray(img.convert("RGB").convert("L")), "cmyk-to-gray"
            if mode in ("RGB", "RGBA", "P", "LA", "PA", "1", "F"):
                source = img.convert("RGBA") if mode in ("P", "PA") else img
                if source.mode in ("F",):
                    return _window_to_uint8(np.asarray(source)), "float-window-to-8bit"
                return np.asarray(source.convert("L")), f"{mode.lower()}-to-gray"
            raise RejectedImage(f"unsupported image mode {mode}")
    except RejectedImage:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RejectedImage(f"not a readable image: {exc}") from exc


def decode_file(path: Path) -> tuple[np.ndarray, str | None]:
    return decode(path.read_bytes(), path.name)


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Square resize with antialiasing (chest films are near-square; the shared set is 224x224 already)."""
    if pixels.shape == (size, size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR, reducing_gap=None))
