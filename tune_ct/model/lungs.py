"""Lung-field segmentation for the `lung_crop` preprocessing option.

A film is cropped to the bounding box of its lungs (plus a margin) before the classifier's resize, so the
classifier reads lungs rather than a collection's borders, text markers and burned-in labels. Only some films
come with a lung mask (Kaggle layout: `<class>/masks/<name>`, Lung_Opacity and Viral Pneumonia only) and films
from a new hospital or a predict call never do, so a small U-Net (`LungNet`) is trained once per dataset on that
dataset's own masks, saved, and applied identically everywhere (trials, evaluation, Grad-CAM, predict, the
registered model). `segmenter_id` (a hash of the saved file) keys any cache of cropped films.

Only tune_ct.data.files is imported from the package: the data stage must never depend on this module.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tune_ct.data.files import DataError, decode_file, resize

SEGMENT_SIZE = 128  # the segmenter's input side: lung fields are large, coarse shapes
CHANNELS = (8, 16, 32, 64)  # 4 levels: ~120k parameters, fast on CPU
MASK_THRESHOLD = 128  # Kaggle masks are 0/255 PNGs: >= 128 is lung
SECOND_LUNG_SHARE = 0.2  # a 2nd component counts as the other lung only if >= 20% of the largest
FORMAT = "tune_ct.lungnet/1"
LUNG_PRIOR_LOGIT = math.log(0.25 / 0.75)


class SegmenterError(ValueError):
    """A saved segmenter file cannot be used (not ours, corrupt, or from another format version)."""


@dataclass(frozen=True)
class LungBox:
    """Where to crop: box = (top, left, bottom, right), bottom/right exclusive (slice bounds)."""

    box: tuple[int, int, int, int]
    fallback: bool  # True: no usable lungs found, the box is the whole image (callers count these)
    shape: tuple[int, int]  # (height, width) of the image the box belongs to

    @property
    def area_share(self) -> float:
        top, left, bottom, right = self.box
        return (bottom - top) * (right - left) / float(self.shape[0] * self.shape[1])


def _groups(channels: int) -> int:
    # One group per channel (instance norm): with several channels per group a channel can sit wholly below
    # its group's mean, die after the ReLU and never recover; a dead head input left whole short runs blank.
    return channels


def _block(cin: int, cout: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: a short training run leaves BatchNorm's running statistics half-converged,
    # and a film's mask must not depend on the batch it is predicted in.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(_groups(cout), cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(_groups(cout), cout), nn.ReLU(inplace=True),
    )


class LungNet(nn.Module):
    """A small U-Net: 1 input channel (standardised film), 1 output logit map at the input's size."""

    def __init__(self, size: int = SEGMENT_SIZE, channels: Sequence[int] = CHANNELS):
        super().__init__()
        if size % 2 ** (len(channels) - 1):
            raise ValueError(f"size {size} must be divisible by {2 ** (len(channels) - 1)} ({len(channels)} levels)")
        self.size, self.channels = int(size), tuple(int(c) for c in channels)
        ins = (1, *self.channels[:-1])
        self.down = nn.ModuleList(_block(i, o) for i, o in zip(ins, self.channels))
        levels = list(reversed(range(len(self.channels) - 1)))
        self.up = nn.ModuleList(nn.ConvTranspose2d(self.channels[i + 1], self.channels[i], 2, stride=2)
                                for i in levels)
        self.merge = nn.ModuleList(_block(2 * self.channels[i], self.channels[i]) for i in levels)
        self.head = nn.Conv2d(self.channels[0], 1, 1)
        # Start at the prior (about a quarter of a film is lung), not at 50%: a short run then spends its
        # steps on where the lungs are rather than on first learning that most pixels are not lung.
        nn.init.constant_(self.head.bias, LUNG_PRIOR_LOGIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def _films_tensor(films: Iterable[np.ndarray], size: int) -> torch.Tensor:
    """N x 1 x size x size floats in [0, 1] from uint8 2-D films of any size."""
    resized = []
    for film in films:
        film = np.asarray(film)
        if film.ndim != 2 or film.dtype != np.uint8:
            raise ValueError(f"expected a 2-D uint8 film, got {film.dtype} of shape {film.shape}")
        resized.append(resize(film, size))
    return torch.from_numpy(np.stack(resized)).float().div_(255.0).unsqueeze(1)


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A bool mask at another size: area-averaged, then thresholded at half (no jagged nearest-neighbour)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == (height, width):
        return mask
    soft = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA
                      if height * width < mask.size else cv2.INTER_LINEAR)
    return soft >= 0.5


def _standardize(x: torch.Tensor) -> torch.Tensor:
    # Per-film zero mean / unit variance: exposure and windowing differ between hospitals and scanners.
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)  # a blank film must not divide by zero
    return (x - mean) / std


def _uniform(n: int, half_width: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen) * 2 - 1) * half_width


def _augment(films: torch.Tensor, masks: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Light, per-film augmentation. No horizontal flip: laterality (the heart sits on the left)."""
    n = films.shape[0]
    scale = 1 + _uniform(n, 0.1, gen)  # +-10% zoom
    angle = _uniform(n, math.radians(5), gen)  # +-5 degrees: patients are not always straight
    shift = torch.stack([_uniform(n, 0.08, gen), _uniform(n, 0.08, gen)], 1)  # +-4% of the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(films.shape), align_corners=False)
    films = F.grid_sample(films, grid, padding_mode="border", align_corners=False)
    masks = F.grid_sample(masks, grid, padding_mode="zeros", align_corners=False)  # soft edges are fine targets
    # Brightness / contrast, then gamma: standardisation removes a purely linear change, gamma it does not.
    contrast = (1 + _uniform(n, 0.2, gen)).view(n, 1, 1, 1)
    brightness = _uniform(n, 0.1, gen).view(n, 1, 1, 1)
    gamma = torch.exp(_uniform(n, 0.3, gen)).view(n, 1, 1, 1)
    films = ((films - 0.5) * contrast + 0.5 + brightness).clamp(0, 1).pow(gamma)
    return films, masks


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE (pixel-wise calibration) + soft Dice (overlap, insensitive to how much of the film is lung)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    denom = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    return bce + (1 - (2 * inter + 1) / (denom + 1)).mean()


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two bool masks of the same shape; 1.0 when both are empty (nothing to find, none found)."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


def split_pairs(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) from a seeded permutation; at least one of each when val_fraction > 0."""
    if n < (2 if val_fraction > 0 else 1):
        raise DataError(f"{n} (film, mask) pair(s): too few to train a lung segmenter")
    perm = np.random.default_rng(seed).permutation(n)
    n_held = 0 if val_fraction <= 0 else min(n - 1, max(1, round(n * val_fraction)))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def _heldout_report(model: LungNet, held: list[tuple[np.ndarray, np.ndarray]], mean_mask: np.ndarray) -> dict:
    """Held-out Dice, with the two trivial baselines a segmenter must beat (all lung; the average lung)."""
    if not held:
        return {"dice_heldout": None, "dice_all_ones": None, "dice_mean_mask": None, "fallback_heldout": None}
    truths = [np.asarray(m, dtype=bool) for _, m in held]
    preds = predict_masks(model, [f for f, _ in held])
    preds = [_resize_mask(p, *t.shape) for p, t in zip(preds, truths)]  # compare at the mask's own size
    return {
        "dice_heldout": float(np.mean([dice(p, t) for p, t in zip(preds, truths)])),
        "dice_all_ones": float(np.mean([dice(np.ones_like(t), t) for t in truths])),
        "dice_mean_mask": float(np.mean([dice(_resize_mask(mean_mask, *t.shape), t) for t in truths])),
        "fallback_heldout": float(np.mean([lung_box(p).fallback for p in preds])),
    }


def train_segmenter(pairs: list[tuple[np.ndarray, np.ndarray]], epochs: int, seed: int, val_fraction: float = 0.15,
                    batch_size: int = 16, threads: int | None = None, size: int = SEGMENT_SIZE,
                    lr: float = 1e-2) -> tuple[LungNet, dict]:
    """Train a LungNet on (uint8 film, bool mask) pairs; returns (model in eval mode, report).

    lr is OneCycle's peak: 1e-2 beat 3e-3 on short runs (per-channel norm keeps it stable). threads sets
    torch's (process-wide) intra-op threads: on a small shared CPU 1 is often faster than 2."""
    if threads:
        torch.set_num_threads(int(threads))
    train_idx, held_idx = split_pairs(len(pairs), val_fraction, seed)
    films = _films_tensor([pairs[i][0] for i in train_idx], size)
    masks = torch.from_numpy(np.stack([_resize_mask(pairs[i][1], size, size) for i in train_idx])).float()
    masks = masks.unsqueeze(1)
    torch.manual_seed(seed)  # the initial weights
    gen = torch.Generator().manual_seed(seed)  # batch order and augmentation
    model = LungNet(size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * math.ceil(len(train_idx) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_idx), generator=gen)
        for b in range(0, len(order), batch_size):
            x, y = _augment(films[order[b:b + batch_size]], masks[order[b:b + batch_size]], gen)
            loss = _loss(model(_standardize(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    mean_mask = masks.mean(dim=0)[0].numpy() >= 0.5
    report = _heldout_report(model, [pairs[i] for i in held_idx], mean_mask)
    report.update({"n_train": len(train_idx), "n_heldout": len(held_idx), "epochs": int(epochs),
                   "seconds": round(seconds, 3), "size": int(size), "seed": int(seed),
                   "final_loss": float(loss.item()) if epochs > 0 else None})
    return model, report


def find_mask_pairs(data_root: Path, files: list[str]) -> list[tuple[str, str]]:
    """(image file, mask file) for each file that has a mask: `<class>/images/<n>` -> `<class>/masks/<n>`.

    Paths are relative to data_root, '/'-separated as `scan` lists them; the order of `files` is kept."""
    root = Path(data_root)
    pairs = []
    for rel in files:
        parts = Path(rel).parts
        if len(parts) != 3 or parts[1].lower() != "images":
            continue  # the old flat layout (<class>/<file>) has no masks
        mask = "/".join((parts[0], "masks", parts[2]))
        if (root / mask).is_file():
            pairs.append((str(rel), mask))
    return pairs


def load_pairs(data_root: Path, pairs: list[tuple[str, str]],
               size: int | None = SEGMENT_SIZE) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decode (film, mask) files to (uint8 film, bool mask) at size x size (None: the film's own size).

    The Kaggle masks are 256x256 while the films may be 224x224: both cover the same field, so the mask is
    resized to the film."""
    root = Path(data_root)
    out = []
    for image_rel, mask_rel in pairs:
        try:
            film, _ = decode_file(root / image_rel)
            mask, _ = decode_file(root / mask_rel)
        except (OSError, ValueError) as exc:  # RejectedImage is a ValueError
            raise DataError(f"cannot read lung-mask pair {image_rel} / {mask_rel}: {exc}") from exc
        film = film if size is None else resize(film, size)
        out.append((film, _resize_mask(mask >= MASK_THRESHOLD, *film.shape)))
    return out


def predict_masks(model: LungNet, films: Sequence[np.ndarray] | np.ndarray, batch_size: int = 16) -> list[np.ndarray]:
    """Bool lung masks, one per uint8 film (a list, or an N x H x W array), each at its film's own size.

    batch_size 16, not 64: on CPU the 128 px activations of 64 films fall out of cache (93 vs 46 films/s
    measured on one EPYC core)."""
    films = list(films)  # an N x H x W array iterates as its 2-D films
    masks: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for b in range(0, len(films), batch_size):
            chunk = films[b:b + batch_size]
            logits = model(_standardize(_films_tensor(chunk, model.size)))[:, 0].numpy()
            for film, logit in zip(chunk, logits):
                height, width = np.asarray(film).shape
                # Resize the logits, not a binary mask: the threshold then falls between pixels smoothly.
                masks.append(cv2.resize(logit, (width, height), interpolation=cv2.INTER_LINEAR) > 0)
    model.train(was_training)
    return masks


def _square(top: int, left: int, bottom: int, right: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Grow the shorter side of a box about its centre to the longer one (clipped): the classifier's square
    resize then keeps the lungs' aspect ratio."""
    side = max(bottom - top, right - left)
    cy, cx = (top + bottom) / 2, (left + right) / 2
    top, bottom = max(0, round(cy - side / 2)), min(height, round(cy + side / 2))
    left, right = max(0, round(cx - side / 2)), min(width, round(cx + side / 2))
    return top, left, bottom, right


def lung_box(mask: np.ndarray, margin: float = 0.08, min_area: float = 0.05, square: bool = False) -> LungBox:
    """The box around the largest one or two connected components (the two lungs), grown by margin times the
    box's own height/width on each side and clipped to the image.

    Falls back to the whole image (fallback=True) when the mask is empty or the lungs found cover less than
    min_area of the image: a bad crop would hide the lungs, the whole film at least keeps them."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    height, width = mask.shape
    whole = LungBox((0, 0, height, width), True, (height, width))
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return whole
    stats = stats[1:]  # row 0 is the background
    areas = stats[:, cv2.CC_STAT_AREA]
    order = np.argsort(-areas, kind="stable")
    keep = order[:2] if len(order) > 1 and areas[order[1]] >= SECOND_LUNG_SHARE * areas[order[0]] else order[:1]
    if areas[keep].sum() < min_area * height * width:
        return whole  # a speck: noise, not lungs
    kept = stats[keep]
    top, left = int(kept[:, cv2.CC_STAT_TOP].min()), int(kept[:, cv2.CC_STAT_LEFT].min())
    bottom = int((kept[:, cv2.CC_STAT_TOP] + kept[:, cv2.CC_STAT_HEIGHT]).max())
    right = int((kept[:, cv2.CC_STAT_LEFT] + kept[:, cv2.CC_STAT_WIDTH]).max())
    grow_y, grow_x = round(margin * (bottom - top)), round(margin * (right - left))
    top, bottom = max(0, top - grow_y), min(height, bottom + grow_y)
    left, right = max(0, left - grow_x), min(width, right + grow_x)
    if square:
        top, left, bottom, right = _square(top, left, bottom, right, height, width)
    return LungBox((top, left, bottom, right), False, (height, width))


def crop_box(film: np.ndarray, box: LungBox) -> np.ndarray:
    top, left, bottom, right = box.box
    return np.asarray(film)[top:bottom, left:right]


def crop_to_lungs(film: np.ndarray, model: LungNet, margin: float = 0.08, min_area: float = 0.05,
                  square: bool = False) -> tuple[np.ndarray, LungBox]:
    """One film cropped to its lungs (the whole film when none are found: see LungBox.fallback)."""
    return crop_to_lungs_batch([film], model, margin=margin, min_area=min_area, square=square)[0]


def crop_to_lungs_batch(films: Sequence[np.ndarray] | np.ndarray, model: LungNet, batch_size: int = 16,
                        margin: float = 0.08, min_area: float = 0.05,
                        square: bool = False) -> list[tuple[np.ndarray, LungBox]]:
    """Many films cropped to their lungs: the segmenter runs batched; crops keep each film's own resolution."""
    films = list(films)
    masks = predict_masks(model, films, batch_size=batch_size)
    boxes = [lung_box(m, margin=margin, min_area=min_area, square=square) for m in masks]
    return [(crop_box(f, b), b) for f, b in zip(films, boxes)]


def _plain(report: dict) -> dict:
    # weights_only loading accepts only plain Python types: numpy scalars become int/float.
    return json.loads(json.dumps(report, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def save_segmenter(path: Path, model: LungNet, report: dict) -> None:
    """Weights, architecture and training report in one file; written atomically (parallel trials may race)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "state_dict": model.state_dict(), "size": int(model.size),
               "channels": list(model.channels), "report": _plain(report)}
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_segmenter(path: Path) -> tuple[LungNet, dict]:
    """(model in eval mode, training report). Weights-only: a segmenter file can never run code."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many types for a foreign or truncated file
        raise SegmenterError(f"cannot load lung segmenter {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SegmenterError(f"{path} is not a lung segmenter file ({FORMAT})")
    model = LungNet(int(payload["size"]), payload["channels"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload["report"]


def segmenter_id(path: Path) -> str:
    """First 16 hex digits of the file's sha256: caches keyed by it change when the segmenter does."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
