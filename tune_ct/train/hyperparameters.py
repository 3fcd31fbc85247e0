"""A trial's hyperparameters, typed, with their defaults and allowed values defined once, here.

The search space is validated against them (tune_ct.train.space: every `params` value, fixed or in a
distribution, goes through `check_value`), and a trial reads its Tune config through `Hyperparameters.from_config`,
so no stage below restates a default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from tune_ct.model.preprocess import EQUALIZE, FILM_NORMS, NORM_LAYERS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Hyperparameters:
    backbone: str = "baseline_cnn"  # a timm model name, or the seed's CNN (registered in timm)
    pretrained: bool = False  # timm's weights via the Hugging Face hub/cache; --weights wins
    image_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    epochs: int = 3
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    class_weighting: bool = True  # inverse-frequency class weights in the loss
    aug_rotation_deg: float = 0.0
    aug_crop_scale_min: float = 1.0
    aug_brightness: float = 0.0
    aug_contrast: float = 0.0
    aug_hflip: bool = False  # off: laterality matters on a chest film (tune_ct.model.augment)
    # Acquisition and intensity augmentation (another hospital's exposure, detector and processing):
    aug_gamma: float = 0.0  # gamma = exp(u), u uniform in [-g, g]
    aug_blur: float = 0.0  # blend towards a blurred copy (> 0) or away from it, i.e. sharpen (< 0), up to this
    aug_noise: float = 0.0  # Gaussian noise, standard deviation uniform in [0, n] (films in [0, 1])
    # Per-film intensity standardisation inside the network's forward (so evaluation, Grad-CAM, predict, ONNX
    # and the served model all apply it): none | zscore | percentile (tune_ct.model.networks.standardise_films).
    film_norm: str = "none"
    # BatchNorm statistics recomputed on clean training films after each epoch, before the val (and select-on)
    # metrics are taken: the figures the search sees are those of the model it keeps.
    bn_recalibrate: bool = False
    # batch | group: GroupNorm in place of BatchNorm (no statistics of the training hospitals kept; from scratch).
    norm_layer: str = "batch"
    precision: str = "auto"  # auto: bf16 autocast where the CPU or GPU runs it fast, else fp32
    # Film preprocessing, applied before resizing and cached like the images (the cache key includes it).
    equalize: str = "none"
    lung_crop: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Hyperparameters":
        """A trial's Tune config (or a saved checkpoint's hp); missing names take their defaults."""
        unknown = sorted(set(config) - set(NAMES))
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
        return cls(**{name: KINDS[name](value) for name, value in config.items()})

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def augment(self):
        from tune_ct.model.augment import Augment  # torch: only where a trial runs

        return Augment(rotation_deg=self.aug_rotation_deg, crop_scale_min=self.aug_crop_scale_min,
                       brightness=self.aug_brightness, contrast=self.aug_contrast, hflip=self.aug_hflip,
                       gamma=self.aug_gamma, blur=self.aug_blur, noise=self.aug_noise)


NAMES = tuple(f.name for f in fields(Hyperparameters))
DEFAULTS = Hyperparameters().as_dict()
KINDS: dict[str, type] = {f.name: {"str": str, "bool": bool, "int": int, "float": float}[f.type]
                          for f in fields(Hyperparameters)}
# Inclusive bounds of the numbers; None: unbounded on that side.
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "image_size": (32, 1024), "lr": (1e-7, 1.0), "weight_decay": (0.0, 1.0), "batch_size": (2, 4096),
    "epochs": (1, 1000), "warmup_epochs": (0.0, 100.0), "label_smoothing": (0.0, 0.5),
    "aug_rotation_deg": (0.0, 45.0), "aug_crop_scale_min": (0.05, 1.0), "aug_brightness": (0.0, 0.5),
    "aug_contrast": (0.0, 0.9), "aug_gamma": (0.0, 1.0), "aug_blur": (0.0, 1.0), "aug_noise": (0.0, 0.2),
}
CHOICES = {"precision": PRECISIONS, "equalize": EQUALIZE, "film_norm": FILM_NORMS, "norm_layer": NORM_LAYERS}


class HyperparameterError(ValueError):
    """A value a hyperparameter cannot take; the message names where it came from."""


def check_value(where: str, name: str, value: Any) -> Any:
    """`value` as the hyperparameter's type, or a HyperparameterError naming `where` and what is allowed."""
    kind = KINDS[name]
    if kind is bool:
        if not isinstance(value, bool):
            raise HyperparameterError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is str:
        return _check_name(where, name, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HyperparameterError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):  # .nan passes every range comparison; .inf cannot be a whole number
        raise HyperparameterError(f"{where}: expected a finite number, got {value!r}")
    if kind is int and int(value) != value:
        raise HyperparameterError(f"{where}: expected a whole number, got {value!r}")
    low, high = BOUNDS.get(name, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        raise HyperparameterError(f"{where}: {value!r} is outside the allowed range [{low}, {high}]")
    return kind(value)


def _check_name(where: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise HyperparameterError(f"{where}: expected a name, got {value!r}")
    from tune_ct.model.networks import is_known_backbone  # timm: only where a space is checked

    if name == "backbone" and not is_known_backbone(value):
        raise HyperparameterError(f"{where}: unknown backbone {value!r}; use baseline_cnn or a timm model name "
                                  "(python -c 'import timm; print(timm.list_models())')")
    if name in CHOICES and value not in CHOICES[name]:
        raise HyperparameterError(f"{where}: {name} must be one of {', '.join(CHOICES[name])}, got {value!r}")
    return value
