"""Augmentation and input normalisation applied to whole batches of uint8 images, on the trial's device.

One `affine_grid` + `grid_sample` does rotation, random-resized-crop and (optional) flip with parameters drawn
per image: torchvision's v2 transforms draw one set of parameters per call, i.e. per batch, and per-image calls
would put the CPU back in the loop. Horizontal flip is off by default: laterality matters on a chest film (the
heart sits on the left; a flipped film is a situs inversus patient, not a plausible new sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Fixed normalisation (stored with registered models): grayscale films in [0, 1] mapped to about zero mean.
MEAN, STD = 0.5, 0.25


@dataclass(frozen=True)
class Augment:
    rotation_deg: float = 0.0  # uniform in [-deg, +deg]
    crop_scale_min: float = 1.0  # random resized crop: kept area fraction uniform in [min, 1]
    brightness: float = 0.0  # additive shift uniform in [-b, +b] (images in [0, 1])
    contrast: float = 0.0  # factor uniform in [1 - c, 1 + c] around the image mean
    hflip: bool = False
    gamma: float = 0.0  # x ** exp(u), u uniform in [-g, g]: another detector's or processing's tone curve
    blur: float = 0.0  # x + a * (blur(x) - x), a uniform in [-b, b]: softer (a > 0) or sharpened (a < 0) films
    noise: float = 0.0  # Gaussian noise with a standard deviation uniform in [0, n]: quantum noise, low dose

    @property
    def geometric(self) -> bool:
        return self.rotation_deg > 0 or self.crop_scale_min < 1.0 or self.hflip


def to_model_input(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> normalised float (B, 1, H, W); the one preprocessing step for train, eval and predict."""
    return ((batch.unsqueeze(1).float() / 255.0) - MEAN) / STD


def augment(batch: torch.Tensor, aug: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (B, H, W) -> augmented, normalised float (B, 1, H, W)."""
    x = batch.unsqueeze(1).float() / 255.0
    n, device = x.shape[0], x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) * (high - low) + low

    if aug.geometric:
        angle = uniform(-aug.rotation_deg, aug.rotation_deg) * (math.pi / 180.0)
        area = uniform(aug.crop_scale_min, 1.0)
        # No crop asked for: keep the whole film (an aspect-ratio draw alone would still stretch and shift it).
        cropping = aug.crop_scale_min < 1.0
        log_ratio = uniform(math.log(3 / 4), math.log(4 / 3)) if cropping else torch.zeros(n, device=device)
        # Crop width/height as fractions of the image (grid units): area = w * h, aspect = w / h.
        w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
        h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
        tx = uniform(-1.0, 1.0) * (1.0 - w)
        ty = uniform(-1.0, 1.0) * (1.0 - h)
        if aug.hflip:
            w = torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -w, w)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos * w, -sin * h, tx], 1), torch.stack([sin * w, cos * h, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = acquisition(x, aug, uniform, generator)
    if aug.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * uniform(1 - aug.contrast, 1 + aug.contrast).view(n, 1, 1, 1) + mean
    if aug.brightness > 0:
        x = x + uniform(-aug.brightness, aug.brightness).view(n, 1, 1, 1)
    return (x.clamp(0.0, 1.0) - MEAN) / STD


def _gaussian_kernel(device: torch.device, sigma: float = 1.0, radius: int = 2) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, 2 * radius + 1, 2 * radius + 1)


def acquisition(x: torch.Tensor, aug: Augment, uniform, generator: torch.Generator | None) -> torch.Tensor:
    """Tone curve, blur or sharpening, and noise, each drawn per film: what another hospital's detector and
    processing change while the anatomy stays (x: float (B, 1, H, W) in [0, 1])."""
    n = x.shape[0]
    if aug.gamma > 0:
        x = x.clamp(1e-6, 1.0) ** torch.exp(uniform(-aug.gamma, aug.gamma)).view(n, 1, 1, 1)
    if aug.blur > 0:
        blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), _gaussian_kernel(x.device))
        x = x + uniform(-aug.blur, aug.blur).view(n, 1, 1, 1) * (blurred - x)
    if aug.noise > 0:
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        x = x + noise * uniform(0.0, aug.noise).view(n, 1, 1, 1)
    return x
