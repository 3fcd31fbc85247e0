"""Grad-CAM (pytorch-grad-cam) for tune_ct models: maps, overlays, a gallery, and the lung-focus score.

The lung-focus score is the share of a CAM's mass inside the lung mask (`<class>/masks/<file name>`, resized to
the image; masks are never used in training). A model that reads labels, markers or borders instead of lungs
scores low.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from PIL import Image
import torch
from torch import nn

from tune_ct.data.files import CLASSES, decode_file, resize
from tune_ct.model.augment import to_model_input
from tune_ct.track.figures import pyplot, save_figure


def target_layer(model: nn.Module) -> nn.Module:
    """The layer whose activations Grad-CAM weighs: the last feature stage of a CNN."""
    info = getattr(model, "feature_info", None)  # timm models (baseline_cnn included) name their last stage here
    if info is not None:
        try:
            return model.get_submodule(info[-1]["module"])
        except (AttributeError, KeyError, IndexError, TypeError):
            pass
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"no convolution in {type(model).__name__}: Grad-CAM needs a CNN (a ViT needs a "
                         "reshape_transform, not supported here)")
    return convs[-1]


def _cam_ready(model: nn.Module) -> nn.Module:
    # Gradient hooks on a tensor that an in-place ReLU then overwrites give wrong or failing backward passes;
    # work on a copy with out-of-place activations so the caller's model is untouched.
    model = copy.deepcopy(model).float().eval()
    for m in model.modules():
        if hasattr(m, "inplace") and isinstance(getattr(m, "inplace"), bool):
            m.inplace = False
    return model


def cam_maps(model: nn.Module, pixels: np.ndarray, classes: list[int] | None = None,
             batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps (N x H x W, values in [0, 1], the images' size) for uint8 images N x H x W, for the given
    class per image (default: the predicted class)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _cam_ready(model)
    out = np.zeros(pixels.shape, dtype=np.float32)
    with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        for start in range(0, len(pixels), batch_size):
            x = to_model_input(torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size])))
            targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in
                                                    classes[start : start + batch_size]]
            out[start : start + len(x)] = cam(input_tensor=x, targets=targets)
    return np.nan_to_num(out, nan=0.0)


def overlay(gray: np.ndarray, cam: np.ndarray, weight: float = 0.4) -> np.ndarray:
    """The CAM as a colour map over the grayscale film (RGB uint8)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.repeat((gray.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=1.0 - weight)


def mask_path(data_root: Path, file: str) -> Path:
    """`<class>/images/<name>` -> `<class>/masks/<name>` (the Kaggle layout)."""
    parts = Path(file).parts
    return Path(data_root) / parts[0] / "masks" / parts[-1]


def load_mask(data_root: Path, file: str, size: int, box=None) -> np.ndarray | None:
    """The lung mask of an image as a bool array at the image size, or None when the image has none. `box`: the
    crop a lung_crop model's input was cut with (a tune_ct.model.lungs.LungBox): the mask is cut the same way."""
    path = mask_path(data_root, file)
    if not path.is_file():
        return None
    mask, _ = decode_file(path)
    if box is not None:
        height, width = box.shape[:2]
        top, left, bottom, right = box.box
        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))[top:bottom, left:right]
    return resize(mask, size) >= 128


def lung_focus(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the CAM's mass inside the mask (0..1); NaN for an all-zero CAM (nothing to attribute)."""
    if cam.shape != mask.shape:
        raise ValueError(f"CAM of shape {cam.shape} and mask of shape {mask.shape}: resize the mask to the image")
    total = float(cam.sum())
    return float(cam[mask].sum() / total) if total > 0 else float("nan")


def lung_focus_scores(data_root: Path, files: list[str], y_true: np.ndarray, cams: np.ndarray,
                      split: str, boxes: dict | None = None) -> dict:
    """Mean / median lung-focus per true class on the images that have masks; classes without masks say so.
    `boxes`: file -> the lung crop of a lung_crop model's input (masks are cut to match)."""
    size = cams.shape[-1]
    per_class: dict[str, list[float]] = {c: [] for c in CLASSES}
    for file, label, cam in zip(files, y_true, cams):
        mask = load_mask(data_root, file, size, (boxes or {}).get(file))
        if mask is not None and mask.any():
            value = lung_focus(cam, mask)
            if np.isfinite(value):
                per_class[CLASSES[int(label)]].append(value)
    out = {"split": split, "cam_target": "predicted class", "per_class": {}}
    every = []
    for cls, values in per_class.items():
        every += values
        out["per_class"][cls] = ({"n": len(values), "mean": float(np.mean(values)), "median": float(np.median(values))}
                                 if values else {"n": 0, "mean": None, "median": None, "note": "no lung masks"})
    out["all_with_masks"] = {"n": len(every), "mean": float(np.mean(every)) if every else None}
    return out


def mask_area_share(data_root: Path, files: list[str], size: int, boxes: dict | None = None) -> float | None:
    """Mean share of the image inside the lung mask: the lung-focus score a CAM spread evenly would get."""
    shares = [m.mean() for f in files if (m := load_mask(data_root, f, size, (boxes or {}).get(f))) is not None]
    return float(np.mean(shares)) if shares else None


def pick_gallery(y_true: np.ndarray, y_pred: np.ndarray, per_class: int = 4, seed: int = 0) -> list[int]:
    """Up to per_class images per true class: half right, half wrong where both exist."""
    rng = np.random.default_rng(seed)
    chosen = []
    for k in range(len(CLASSES)):
        right = rng.permutation(np.flatnonzero((y_true == k) & (y_pred == k)))
        wrong = rng.permutation(np.flatnonzero((y_true == k) & (y_pred != k)))
        n_wrong = min(len(wrong), per_class // 2)
        take = list(wrong[:n_wrong]) + list(right[: per_class - n_wrong])
        if len(take) < per_class:
            take += list(wrong[n_wrong : n_wrong + per_class - len(take)])
        chosen += sorted(take)
    return [int(i) for i in chosen]


def plot_gallery(pixels: np.ndarray, cams: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray,
                 rows: list[int], path: Path, title: str, per_row: int = 4) -> Path:
    """A grid of overlays; each tile names the truth, the prediction (its probability) and right/wrong."""
    plt = pyplot()
    n_rows = max(1, int(np.ceil(len(rows) / per_row)))
    fig, axes = plt.subplots(n_rows, per_row, figsize=(2.4 * per_row, 2.6 * n_rows), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), rows):
        ax.imshow(overlay(pixels[i], cams[i]))
        ok = y_true[i] == y_pred[i]
        ax.set_title(f"true {CLASSES[y_true[i]]}\npred {CLASSES[y_pred[i]]} {probs[i, y_pred[i]]:.2f} "
                     f"{'RIGHT' if ok else 'WRONG'}", fontsize=7, color="darkgreen" if ok else "darkred")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
