"""Small real-film datasets copied from the shared set, and real DICOM files written by pydicom."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tune_ct.data.files import CLASSES


def make_small_dataset(src: Path, dst: Path, per_class: int, start: int = 0) -> Path:
    """A dataset folder of `per_class` real images per class (copied, so tests may change them)."""
    for label in CLASSES:
        files = sorted((src / label / "images").iterdir())[start : start + per_class]
        out = dst / label / "images"
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, out / f.name)
    return dst


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", window=None, bits: int = 12,
                preamble: bool = True) -> Path:
    """A real DICOM file (explicit VR little endian, 16-bit allocated) holding `pixels` as they are."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # no 128-byte preamble and no 'DICM': what some old modalities write; only the .dcm name tells
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path.write_bytes(buf.getvalue()[132:])
    return path


def twelve_bit_dicom(path: Path, film: np.ndarray) -> Path:
    """An 8-bit film as a 12-bit DICOM, as a modality would store it."""
    return write_dicom(path, film.astype(np.uint16) * 16)


def checkpoint_meta(backbone: str, size: int, film=None, hp: dict | None = None, epoch: int = 0):
    """The CheckpointMeta of a test model (no film preprocessing unless `film`, a Preprocessing, is given)."""
    from tune_ct.model.checkpoint import CheckpointMeta
    from tune_ct.model.preprocess import Preprocessing

    return CheckpointMeta(backbone, size, dict(hp or {}), epoch, film or Preprocessing())


def make_external_collection(src: Path, dst: Path, per_origin: int) -> Path:
    """A copy of `per_origin` real films of each origin of shared/data/external_dev, with its labels.csv (rows of
    the copied films only): a collection in the labels-CSV layout, several origins in one folder."""
    import csv

    with (src / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    taken: dict[str, int] = {}
    kept = []
    for row in sorted(rows, key=lambda r: r["file"]):
        if taken.get(row["origin"], 0) < per_origin:
            taken[row["origin"]] = taken.get(row["origin"], 0) + 1
            (dst / row["file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / row["file"], dst / row["file"])
            kept.append(row)
    with (dst / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "origin"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
    return dst
