"""The checkpoint format, owned here alone: what a trial saves each epoch, what evaluation and the registry load.

A checkpoint folder holds `model.pt` (state dict + backbone, image size, classes, hyperparameters, epoch),
`train_state.pt` (optimizer and LR schedule, for resuming) and `metrics.json` (the epoch's report, replayed when a
resumed trial has nothing left to train). Loading is weights-only: a checkpoint can never run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tune_ct.data.files import CLASSES
from tune_ct.model.networks import build_model

CHECKPOINT_FILE = "model.pt"
TRAIN_STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.json"


@dataclass
class TrainState:
    """What a resumed trial restores: the saved model dict, optimizer/scheduler states, the last report."""

    saved: dict
    optimizer: dict
    scheduler: dict
    epoch: int
    last_metrics: dict | None


def _unwrapped(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the network in .module


def save_weights(path: Path, model: nn.Module, hp: dict, epoch: int, extra: dict | None = None) -> None:
    """model.pt: the state dict with what rebuilding the network needs."""
    torch.save({"model": _unwrapped(model).state_dict(), "backbone": hp["backbone"],
                "image_size": int(hp["image_size"]), "classes": list(CLASSES), "hp": hp, "epoch": epoch,
                **(extra or {})}, path)


def save_checkpoint(folder: Path, model, optimizer, scheduler, epoch: int, hp: dict,
                    metrics: dict | None = None, extra: dict | None = None) -> None:
    """`extra`: more metadata for model.pt, e.g. the film preprocessing the model was trained with."""
    folder = Path(folder)
    if metrics is not None:
        (folder / METRICS_FILE).write_text(json.dumps(metrics, default=lambda o: getattr(o, "item", lambda: str(o))()))
    save_weights(folder / CHECKPOINT_FILE, model, hp, epoch, extra)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch},
               folder / TRAIN_STATE_FILE)


def load_checkpoint_file(path: Path) -> dict:
    """Weights-only load: a checkpoint can never run code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_train_state(folder: Path) -> TrainState:
    folder = Path(folder)
    state = load_checkpoint_file(folder / TRAIN_STATE_FILE)
    report = folder / METRICS_FILE
    return TrainState(load_checkpoint_file(folder / CHECKPOINT_FILE), state["optimizer"], state["scheduler"],
                      int(state["epoch"]), json.loads(report.read_text()) if report.exists() else None)


def load_checkpoint_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the network of a checkpoint folder or model.pt file, in eval mode, with its saved metadata."""
    path = Path(path)
    saved = load_checkpoint_file(path if path.is_file() else path / CHECKPOINT_FILE)
    model = build_model(saved["backbone"], int(saved["image_size"]))
    model.load_state_dict(saved["model"])
    model.eval()
    return model, saved
