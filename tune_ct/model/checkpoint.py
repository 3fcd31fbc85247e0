"""The checkpoint format, owned here alone: what a trial saves each epoch, what evaluation and the registry load.

A checkpoint folder holds `model.pt` (state dict + its `CheckpointMeta`: backbone, image size, classes,
hyperparameters, epoch, film preprocessing), `train_state.pt` (optimizer and LR schedule, for resuming) and
`metrics.json` (the epoch's report, replayed when a resumed trial has nothing left to train). Loading is
weights-only: a checkpoint can never run code. A registered model carries the same model.pt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from tune_ct.data.files import CLASSES
from tune_ct.model.networks import build_model
from tune_ct.model.preprocess import Preprocessing

CHECKPOINT_FILE = "model.pt"
TRAIN_STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class CheckpointMeta:
    """What model.pt says besides the weights: what rebuilds the network and what every film must go through."""

    backbone: str
    image_size: int
    hp: dict  # the trial's hyperparameters as trained
    epoch: int
    film: Preprocessing  # equalisation and crop to the lungs, applied before resizing
    classes: tuple[str, ...] = tuple(CLASSES)

    @classmethod
    def read(cls, saved: dict, folder: Path | None = None) -> "CheckpointMeta":
        """The one reader of model.pt's metadata. `folder`: where a registered model was downloaded (its
        segmenter path is relative to it)."""
        return cls(str(saved["backbone"]), int(saved["image_size"]), dict(saved.get("hp") or {}),
                   int(saved.get("epoch", 0)), film_preprocessing(saved, folder),
                   tuple(saved.get("classes", CLASSES)))

    def fields(self) -> dict:
        """What model.pt holds beside the state dict."""
        return {"backbone": self.backbone, "image_size": self.image_size, "classes": list(self.classes),
                "hp": self.hp, "epoch": self.epoch, "film_preprocessing": self.film.describe()}

    def with_film(self, film: Preprocessing) -> "CheckpointMeta":
        return replace(self, film=film)

    @property
    def title(self) -> str:
        return f"{self.backbone}, {self.image_size}px"


def film_preprocessing(saved: dict, folder: Path | None = None) -> Preprocessing:
    """The film preprocessing a model was trained with; a relative segmenter path is inside the model's folder."""
    described = saved.get("film_preprocessing")
    if not described:  # checkpoints from before lung_crop: equalisation was only a hyperparameter
        return Preprocessing(str((saved.get("hp") or {}).get("equalize", "none")))
    segmenter = described.get("segmenter")
    if segmenter and folder is not None and not Path(segmenter).is_absolute():
        segmenter = str(Path(folder) / segmenter)
    return Preprocessing(described.get("equalize", "none"), bool(described.get("lung_crop")), segmenter)


@dataclass
class TrainState:
    """What a resumed trial restores: the weights, optimizer/scheduler states, the last report."""

    weights: dict  # the network's state dict
    optimizer: dict
    scheduler: dict
    epoch: int
    last_metrics: dict | None


def _unwrapped(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the network in .module


def save_weights(path: Path, model: nn.Module, meta: CheckpointMeta) -> None:
    """model.pt: the state dict with what rebuilding the network needs."""
    torch.save({"model": _unwrapped(model).state_dict(), **meta.fields()}, path)


def save_checkpoint(folder: Path, model, optimizer, scheduler, meta: CheckpointMeta,
                    metrics: dict | None = None) -> None:
    folder = Path(folder)
    if metrics is not None:
        (folder / METRICS_FILE).write_text(json.dumps(metrics, default=lambda o: getattr(o, "item", lambda: str(o))()))
    save_weights(folder / CHECKPOINT_FILE, model, meta)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": meta.epoch},
               folder / TRAIN_STATE_FILE)


def load_checkpoint_file(path: Path) -> dict:
    """Weights-only load: a checkpoint can never run code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_train_state(folder: Path) -> TrainState:
    folder = Path(folder)
    state = load_checkpoint_file(folder / TRAIN_STATE_FILE)
    report = folder / METRICS_FILE
    return TrainState(load_checkpoint_file(folder / CHECKPOINT_FILE)["model"], state["optimizer"],
                      state["scheduler"], int(state["epoch"]), json.loads(report.read_text()) if report.exists() else None)


def load_checkpoint_model(path: str | Path, folder: Path | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the network of a checkpoint folder or model.pt file, in eval mode, with its metadata. `folder`:
    the registered model's folder, when model.pt is one's (see CheckpointMeta.read)."""
    path = Path(path)
    saved = load_checkpoint_file(path if path.is_file() else path / CHECKPOINT_FILE)
    meta = CheckpointMeta.read(saved, folder)
    model = build_model(meta.backbone, meta.image_size, film_norm=str(meta.hp.get("film_norm", "none")),
                        norm_layer=str(meta.hp.get("norm_layer", "batch")))
    model.load_state_dict(saved["model"])
    model.eval()
    return model, meta
