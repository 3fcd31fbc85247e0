"""Classify chest films (PNG, JPEG, DICOM) with a model: the same decode -> resize -> normalise path as training.

A file that cannot be read gets its own error and the others are still answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tune_ct.data.files import CLASSES, RejectedImage, decode, resize
from tune_ct.model.augment import to_model_input
from tune_ct.model.preprocess import Preprocessing, per_film


@dataclass
class Prediction:
    file: str
    probabilities: dict[str, float] = field(default_factory=dict)
    predicted: str | None = None
    conversion: str | None = None
    gradcam: str | None = None
    error: str | None = None


def read_films(paths: list[Path]) -> tuple[list[Prediction], list[np.ndarray | None]]:
    out, images = [], []
    for path in paths:
        try:
            pixels, conversion = decode(Path(path).read_bytes(), Path(path).name)
            out.append(Prediction(str(path), conversion=conversion))
            images.append(pixels)
        except (OSError, RejectedImage) as exc:
            out.append(Prediction(str(path), error=f"{type(exc).__name__}: {exc}"))
            images.append(None)
    return out, images


def predict_files(model: torch.nn.Module, image_size: int, paths: list[Path], gradcam_dir: Path | None = None,
                  batch_size: int = 32, preprocessing: Preprocessing | None = None) -> list[Prediction]:
    """`preprocessing`: what the model was trained with (equalisation, the crop to the lungs), applied to each
    film before resizing exactly as the image cache applied it in training."""
    preds, images = read_films(paths)
    ok = [i for i, img in enumerate(images) if img is not None]
    if not ok:
        return preds
    films = per_film(preprocessing)
    if films is not None:  # overlays then show the film as the model saw it (cropped, equalised)
        images = [films.apply(img) if img is not None else None for img in images]
    batch = np.stack([resize(images[i], image_size) for i in ok])
    model.eval()
    probs = np.zeros((len(ok), len(CLASSES)), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(ok), batch_size):
            x = to_model_input(torch.from_numpy(batch[start : start + batch_size]))
            probs[start : start + len(x)] = torch.softmax(model(x).float(), 1).numpy()
    for row, i in enumerate(ok):
        preds[i].probabilities = {c: round(float(p), 6) for c, p in zip(CLASSES, probs[row])}
        preds[i].predicted = CLASSES[int(probs[row].argmax())]
    if gradcam_dir is not None:
        write_overlays(model, batch, probs.argmax(1), [preds[i] for i in ok], [images[i] for i in ok], gradcam_dir)
    return preds


def write_overlays(model, batch: np.ndarray, classes: np.ndarray, preds: list[Prediction], originals, out: Path):
    """Grad-CAM of the predicted class, scaled up and laid over the film at its own resolution."""
    import cv2
    from PIL import Image

    from tune_ct.evaluate.gradcam import cam_maps, overlay

    out.mkdir(parents=True, exist_ok=True)
    cams = cam_maps(model, batch, [int(c) for c in classes])
    used: set[str] = set()
    for pred, original, cam in zip(preds, originals, cams):
        name = Path(pred.file).stem
        while name in used:  # two inputs with one stem (a/x.png, b/x.png) get distinct overlays
            name += "_"
        used.add(name)
        big = cv2.resize(cam, (original.shape[1], original.shape[0]), interpolation=cv2.INTER_LINEAR)
        path = out / f"{name}.gradcam.png"
        Image.fromarray(overlay(original, np.clip(big, 0, 1))).save(path)
        pred.gradcam = str(path)
