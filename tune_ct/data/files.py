"""Find the image files of a dataset folder and decode them to 8-bit grayscale.

Layout (Kaggle COVID-19 Radiography Database): ``<class>/images/<file>`` (older releases: ``<class>/<file>``);
``<class>/masks/`` holds lung masks, which are never used for training and are reported as ignored. Every
other file is either an image we use (possibly after a counted conversion), a rejected image (with the
reason), or ignored (listed in the summary).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

CLASSES: tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}
DICOM_EXTENSIONS = (".dcm", ".dicom")
DATA_ENV = "TUNE_CT_DATA"
# A thumbnail or placeholder this small is not a usable radiograph (the shared set is 224x224).
MIN_SIDE = 32


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


def _is_candidate(parts: tuple[str, ...], name: str) -> str | None:
    """The class of a file that should be an image, or None for a file to report as ignored."""
    if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        return None  # .DS_Store, macOS '._x.png' resource forks, Thumbs.db, *.xlsx, notes
    label = class_for_folder(parts[0]) if parts else None
    if label is None:
        return None
    if len(parts) == 1 or (len(parts) == 2 and parts[1].lower() == "images"):
        return label
    return None  # masks/ and any other sub-folder


def walk_files(root: Path):
    """(path parts below root, file name) of every file, in a stable order; an unreadable folder stops the run."""
    def unreadable(exc: OSError) -> None:
        # os.walk skips unreadable folders silently by default; a skipped folder would drop images unseen.
        raise DataError(f"cannot read folder {exc.filename}: {exc.strerror}; fix its permissions and re-run")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()
        parts = Path(dirpath).relative_to(root).parts
        for name in sorted(filenames):
            yield parts, name


def scan(root: Path, require_all: bool = True) -> Scan:
    """List every file under root as a class image or as ignored; errors when nothing usable is there (or, with
    require_all, when a class has no image: other collections may bring it otherwise)."""
    root = Path(root)
    result = Scan(root=root)
    found: dict[str, int] = {c: 0 for c in CLASSES}

    for parts, name in walk_files(root):
        rel = "/".join((*parts, name))
        label = _is_candidate(parts, name)
        if label:
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
    if missing and require_all:
        raise DataError(f"no images for class(es) {', '.join(missing)} in {root}: expected images in "
                        + ", ".join(str(root / c / "images") for c in missing))
    return result


def _window_to_uint8(pixels: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Linear map of [low, high] (default: the image's own range) to 0..255, clipping outside."""
    pixels = pixels.astype(np.float64)
    low = float(np.min(pixels)) if low is None else low
    high = float(np.max(pixels)) if high is None else high
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    scaled = (np.clip(pixels, low, high) - low) / (high - low)
    return np.round(scaled * 255.0).astype(np.uint8)


def _voi_output_range(ds) -> tuple[float, float] | None:
    """The value range pydicom's apply_voi_lut maps into, so a window keeps its meaning in 8 bits.

    Mirrors pydicom.pixels.processing.apply_windowing / apply_voi (LUT preferred over a window).
    None when the file has no VOI transform (then the image's own range is used)."""
    voi = ds.get("VOILUTSequence")
    if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
        return 0.0, float(2 ** int(voi[0].LUTDescriptor[2]) - 1)
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        low, high = -float(2 ** (int(ds.BitsStored) - 1)), float(2 ** (int(ds.BitsStored) - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = sorted((low * float(slope) + float(intercept), high * float(slope) + float(intercept)))
    return low, high


def _decode_dicom(data: bytes, has_preamble: bool) -> tuple[np.ndarray, str]:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        # force=True only for a .dcm file without the 128-byte preamble (allowed by older writers).
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
        if "PixelData" not in ds:
            raise RejectedImage("DICOM without pixel data (a report or structured document, not an image)")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise RejectedImage(f"multi-frame DICOM ({frames} frames); expected one radiograph per file")
        pixels = ds.pixel_array
    except RejectedImage:
        raise
    except Exception as exc:  # pydicom raises many types for broken or compressed-without-plugin files
        raise RejectedImage(f"unreadable DICOM: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # colour secondary capture: pydicom gives RGB
        return np.asarray(Image.fromarray(pixels.astype(np.uint8)).convert("L")), "dicom-rgb-to-gray"
    if pixels.ndim != 2:
        raise RejectedImage(f"DICOM pixel array of shape {pixels.shape}; expected one 2-D grayscale frame")
    # Modality LUT (rescale) first, then the VOI LUT or window chosen by the modality (DICOM PS3.3 C.11).
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    out_range = _voi_output_range(ds)
    if out_range is None:
        image, conversion = _window_to_uint8(values), "dicom-minmax-window"
    else:
        image, conversion = _window_to_uint8(values, *out_range), "dicom-voi-lut"
    if photometric == "MONOCHROME1":  # MONOCHROME1: high values are dark; invert to MONOCHROME2 like the PNGs
        image = 255 - image
        conversion += "+invert-monochrome1"
    return image, conversion


def _decode_pil(img: Image.Image) -> tuple[np.ndarray, str | None]:
    mode, fmt = img.mode, (img.format or "unknown").lower()
    prefix = "" if fmt == "png" else fmt  # the shared set is 8-bit PNG: anything else is counted
    if mode == "L":
        return np.asarray(img, dtype=np.uint8), prefix or None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # No calibration in a plain 16-bit/float file: window the image's own range to 8 bits.
        kind = "float" if mode == "F" else "16bit" if mode.startswith("I;16") else "32bit"
        conversion = f"{kind}-window-to-8bit"
        return _window_to_uint8(np.asarray(img)), f"{prefix}+{conversion}" if prefix else conversion
    if mode in ("RGBA", "LA", "PA", "P"):
        # Transparent pixels go to black (the film background) instead of whatever colour they hide.
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    elif mode not in ("RGB", "CMYK", "1", "YCbCr", "LAB", "HSV"):
        raise RejectedImage(f"unsupported image mode {mode} ({fmt})")
    names = {"P": "palette", "PA": "palette", "1": "1bit"}
    conversion = f"{names.get(mode, mode.lower())}-to-gray"
    gray = img.convert("RGB").convert("L") if mode in ("CMYK", "LAB", "HSV") else img.convert("L")
    return np.asarray(gray, dtype=np.uint8), f"{prefix}+{conversion}" if prefix else conversion


def decode(data: bytes, name: str = "") -> tuple[np.ndarray, str | None]:
    """Decode file bytes to a 2-D uint8 array. Returns (pixels, conversion or None); raises RejectedImage."""
    if not data:
        raise RejectedImage("empty file (0 bytes)")
    has_preamble = data[128:132] == b"DICM"
    if has_preamble or name.lower().endswith(DICOM_EXTENSIONS):
        pixels, conversion = _decode_dicom(data, has_preamble)
    else:
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                pixels, conversion = _decode_pil(img)
        except RejectedImage:
            raise
        except UnidentifiedImageError:
            raise RejectedImage(f"not an image: content matches no image format (starts with {data[:16]!r})") from None
        except Image.DecompressionBombError as exc:
            raise RejectedImage(f"image too large to decode safely: {exc}") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # PIL says 'image file is truncated' / 'broken data stream' for cut-off or corrupt files.
            raise RejectedImage(f"truncated or corrupt image: {exc}") from exc
    if min(pixels.shape) < MIN_SIDE:
        raise RejectedImage(f"image of {pixels.shape[1]}x{pixels.shape[0]} pixels is too small "
                            f"(under {MIN_SIDE}): a thumbnail or placeholder, not a radiograph")
    return pixels, conversion


def pixel_sha(pixels: np.ndarray) -> str:
    """Identity of decoded pixels (shape included): a PNG re-saved or converted losslessly keeps it."""
    return hashlib.sha256(f"{pixels.shape}".encode() + np.ascontiguousarray(pixels).tobytes()).hexdigest()


def decode_file(path: Path) -> tuple[np.ndarray, str | None]:
    return decode(Path(path).read_bytes(), Path(path).name)


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Square resize with antialiasing (chest films are near-square; the shared set is 224x224 already)."""
    if pixels.shape == (size, size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR, reducing_gap=None))
