"""Model builders: the seed's Keras CNN (`baseline_cnn`) and any timm model, 1-channel input, 4 classes.

Models are trained from scratch unless the user names a local weights file: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tune_ct.files import CLASSES

BASELINE = "baseline_cnn"


class BaselineCNN(nn.Module):
    """The seed notebook's Keras network: 3x3 convs 16-32-64-64 each followed by 2x2 max-pool, dropout 0.35
    after the third block, dense 128 with L2 weight decay, 4 outputs."""

    def __init__(self, image_size: int, num_classes: int = len(CLASSES), l2: float = 1e-4):
        super().__init__()
        if image_size < 16:
            raise ValueError(f"baseline_cnn needs image_size >= 16 (four 2x2 pools), got {image_size}")
        layers: list[nn.Module] = []
        channels = [1, 16, 32, 64, 64]
        for i in range(4):
            layers += [nn.Conv2d(channels[i], channels[i + 1], 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            if i == 2:
                layers.append(nn.Dropout(0.35))
        self.features = nn.Sequential(*layers)
        side = image_size // 16
        self.dense = nn.Linear(64 * side * side, 128)
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(128, num_classes))
        self.l2 = l2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense(torch.flatten(self.features(x), 1)))

    def regularization_loss(self) -> torch.Tensor:
        # Keras' kernel_regularizer=l2(l2) on the dense layer adds l2 * sum(W^2) to the loss.
        return self.l2 * self.dense.weight.pow(2).sum()


def is_known_backbone(name: str) -> bool:
    if name == BASELINE:
        return True
    import timm

    return bool(timm.is_model(name))


def build_model(backbone: str, image_size: int, weights: str | None = None) -> nn.Module:
    """A fresh model; `weights` is a local file (timm/torch state dict, or a .safetensors file)."""
    if backbone == BASELINE:
        model = BaselineCNN(image_size)
        if weights:
            state = torch.load(_existing(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("model", state))
        return model
    import timm

    if not timm.is_model(backbone):
        raise ValueError(f"unknown backbone {backbone!r}: use {BASELINE} or a timm model name (timm.list_models())")
    if not weights:
        return timm.create_model(backbone, pretrained=False, in_chans=1, num_classes=len(CLASSES))
    # timm adapts the first conv to 1 channel and drops a mismatched classifier when loading pretrained weights;
    # the overlay points it at the local file so it never reaches for a model hub.
    return timm.create_model(
        backbone, pretrained=True, in_chans=1, num_classes=len(CLASSES),
        pretrained_cfg_overlay={"file": str(_existing(weights)), "hf_hub_id": None, "url": None},
    )


def _existing(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"weights file {p} does not exist. tune_ct never downloads weights: download them yourself and pass "
            "the local path, or leave weights unset to train from scratch"
        )
    return p


def regularization_loss(model: nn.Module) -> torch.Tensor | None:
    inner = getattr(model, "module", model)  # unwrap DistributedDataParallel
    fn = getattr(inner, "regularization_loss", None)
    return fn() if fn else None
