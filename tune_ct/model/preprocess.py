"""Per-film preprocessing the search can choose: histogram equalisation and the crop to the lungs.

Applied to the decoded film before resizing, identically in trials (through the image cache, whose key includes
it), evaluation, Grad-CAM, predict and the registered model. The crop uses the dataset's own lung segmenter
(tune_ct.model.lungs), so a film that comes without a mask is cropped the same way as one with.
Order: crop (the segmenter was trained on raw films), then equalise (its statistics then come from the lungs).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tune_ct.data.cache import PerFilm

EQUALIZE = ("none", "hist", "clahe")
# Per-film intensity standardisation, done inside the network's forward (tune_ct.model.networks.standardise_films)
# rather than in the cache: it is a function of the film alone and must follow the model wherever it goes.
FILM_NORMS = ("none", "zscore", "percentile")
# The network's normalisation layers (tune_ct.model.networks): batch, the backbone's BatchNorm (its statistics are
# the training hospitals'); group, GroupNorm, which normalises each film by itself and keeps no training
# statistics (Wu & He 2018). Named here, beside the film norms, so settings are checked without importing torch.
NORM_LAYERS = ("batch", "group")
# CLAHE as usually applied to chest films: 8x8 tiles, contrast limited at 2x the mean histogram bin.
CLAHE_CLIP, CLAHE_TILES = 2.0, (8, 8)


@dataclass(frozen=True)
class Preprocessing:
    equalize: str = "none"
    lung_crop: bool = False
    segmenter: str | None = None  # the lung segmenter file, when lung_crop

    @classmethod
    def chosen(cls, equalize: str, lung_crop: bool, segmenter: str | Path | None) -> "Preprocessing":
        """What a trial's hyperparameters ask for, with the search's segmenter when it crops to the lungs."""
        if lung_crop and not segmenter:
            raise ValueError("lung_crop: true needs the dataset's lung segmenter, and none was given: the search "
                             "trains one from the masks/ folders before the first trial")
        return cls(str(equalize), bool(lung_crop), str(segmenter) if lung_crop else None)

    @property
    def identity(self) -> bool:
        return self.equalize == "none" and not self.lung_crop

    def key(self) -> str:
        from tune_ct.model.lungs import segmenter_id

        parts = [f"equalize={self.equalize}"] if self.equalize != "none" else []
        if self.lung_crop:
            parts.append(f"lungs={segmenter_id(Path(self.segmenter))}")
        return ",".join(parts)

    def describe(self) -> dict:
        return asdict(self)


def equalize(pixels: np.ndarray, how: str) -> np.ndarray:
    import cv2

    if how == "hist":
        return cv2.equalizeHist(np.ascontiguousarray(pixels))
    if how == "clahe":
        return cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=CLAHE_TILES).apply(np.ascontiguousarray(pixels))
    if how != "none":
        raise ValueError(f"equalize must be one of {', '.join(EQUALIZE)}, got {how!r}")
    return pixels


class FilmPreprocessor:
    """The preprocessing as a function of one film, the segmenter loaded once; counts crops that fell back to the
    whole film (no lungs found), so a cache or a prediction can say how often it happened."""

    def __init__(self, prep: Preprocessing):
        self.prep = prep
        self._model = None  # loaded at the first film: an existing cache needs no segmenter
        self._lock = threading.Lock()
        self.films = 0
        self.fallbacks = 0

    def segmenter(self):
        from tune_ct.model.lungs import load_segmenter

        with self._lock:
            if self._model is None:
                self._model, _ = load_segmenter(Path(self.prep.segmenter))
            return self._model

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        fallback = False
        if self.prep.lung_crop:
            from tune_ct.model.lungs import crop_to_lungs

            pixels, box = crop_to_lungs(pixels, self.segmenter())
            fallback = box.fallback
        with self._lock:
            self.films += 1
            self.fallbacks += int(fallback)
        return equalize(pixels, self.prep.equalize)

    def stats(self) -> dict:
        return {**self.prep.describe(), "films": self.films, "lung_crop_fallbacks": self.fallbacks}


def per_film(prep: Preprocessing | None) -> PerFilm | None:
    """What the image cache applies to each film (None: plain resizing, the caches of before)."""
    if prep is None or prep.identity:
        return None
    fn = FilmPreprocessor(prep)
    return PerFilm(key=prep.key(), apply=fn, stats=fn.stats)
