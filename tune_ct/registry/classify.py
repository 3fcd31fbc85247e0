"""Classify chest films (PNG, JPEG, DICOM) with a model: the same decode -> per-film preprocessing -> resize ->
normalise path as training, for `predict` (files) and the served model (bytes, tune_ct.registry.serving) alike.

A film that cannot be read gets its own error and the others are still answered. The network is any function
from the normalised batch to logits: the PyTorch model, or its ONNX export under ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tune_ct.data.cache import PerFilm
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


Network = Callable[[torch.Tensor], torch.Tensor]  # normalised N x 1 x S x S films -> N x classes logits


def torch_network(model: torch.nn.Module) -> Network:
    model.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return forward


def probabilities(network: Network, x: torch.Tensor) -> np.ndarray:
    """Softmax of the network's logits: one place, so every runtime's probabilities are computed alike."""
    return torch.softmax(network(x).float(), 1).numpy()


def decode_film(name: str, data: bytes) -> tuple[Prediction, np.ndarray | None]:
    """One film's bytes (PNG, JPEG, DICOM) -> its Prediction (conversion or error) and pixels (None: unreadable)."""
    try:
        pixels, conversion = decode(data, Path(name).name)
    except RejectedImage as exc:
        return Prediction(name, error=f"{type(exc).__name__}: {exc}"), None
    return Prediction(name, conversion=conversion), pixels


def read_films(paths: list[Path]) -> tuple[list[Prediction], list[np.ndarray | None]]:
    out, images = [], []
    for path in paths:
        try:
            pred, pixels = decode_film(str(path), Path(path).read_bytes())
        except OSError as exc:
            pred, pixels = Prediction(str(path), error=f"{type(exc).__name__}: {exc}"), None
        out.append(pred)
        images.append(pixels)
    return out, images


@dataclass
class Classified:
    """What classify saw: the readable films' indices, the network's input pixels and its probabilities, and the
    films after the per-film preprocessing (for overlays)."""

    ok: list[int]
    batch: np.ndarray
    probs: np.ndarray
    images: list[np.ndarray | None]


def classify(preds: list[Prediction], images: list[np.ndarray | None], image_size: int, network: Network,
             films: PerFilm | None = None, batch_size: int = 32) -> Classified | None:
    """Fill in the probabilities and predicted class of every readable film; None when no film is readable.
    `films`: the model's per-film preprocessing (equalisation, the crop to the lungs), applied before resizing
    exactly as the image cache applied it in training."""
    ok = [i for i, img in enumerate(images) if img is not None]
    if not ok:
        return None
    if films is not None:  # overlays then show the film as the model saw it (cropped, equalised)
        images = [films.apply(img) if img is not None else None for img in images]
    batch = np.stack([resize(images[i], image_size) for i in ok])
    probs = np.zeros((len(ok), len(CLASSES)), dtype=np.float32)
    for start in range(0, len(ok), batch_size):
        x = to_model_input(torch.from_numpy(batch[start : start + batch_size]))
        probs[start : start + len(x)] = probabilities(network, x)
    for row, i in enumerate(ok):
        preds[i].probabilities = {c: round(float(p), 6) for c, p in zip(CLASSES, probs[row])}
        preds[i].predicted = CLASSES[int(probs[row].argmax())]
    return Classified(ok, batch, probs, images)


def predict_files(model: torch.nn.Module, image_size: int, paths: list[Path], gradcam_dir: Path | None = None,
                  batch_size: int = 32, preprocessing: Preprocessing | None = None,
                  network: Network | None = None) -> list[Prediction]:
    """`preprocessing`: what the model was trained with; `network`: what computes the logits (default the
    PyTorch model; tune_ct.registry.onnx_export.onnx_network for ONNX Runtime). Grad-CAM always uses `model`."""
    preds, images = read_films(paths)
    done = classify(preds, images, image_size, network or torch_network(model), per_film(preprocessing), batch_size)
    if done is not None and gradcam_dir is not None:
        write_overlays(model, done.batch, done.probs.argmax(1), [preds[i] for i in done.ok],
                       [done.images[i] for i in done.ok], gradcam_dir)
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
