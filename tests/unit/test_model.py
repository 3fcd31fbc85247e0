"""Networks (tune_ct/model/networks.py) and the checkpoint format (tune_ct/model/checkpoint.py), on a tiny
baseline_cnn at 32 px."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import timm
import torch
from torch import nn

from tune_ct.data.files import CLASSES
from tune_ct.model.checkpoint import (CHECKPOINT_FILE, METRICS_FILE, TRAIN_STATE_FILE, load_checkpoint_file,
                                      load_checkpoint_model, load_train_state, save_checkpoint, save_weights)
from tune_ct.model.checkpoint import CheckpointMeta
from tune_ct.model.preprocess import Preprocessing
from tune_ct.model.networks import BaselineCNN, build_model, is_known_backbone, regularization_loss
from tune_ct.train.loop import warmup_cosine

SIZE = 32
HP = {"backbone": "baseline_cnn", "image_size": SIZE, "lr": 0.01, "batch_size": 4}


def meta(epoch: int) -> CheckpointMeta:
    return CheckpointMeta("baseline_cnn", SIZE, HP, epoch, Preprocessing())


def fresh(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("baseline_cnn", SIZE)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_baseline_cnn_is_a_timm_model():
    assert timm.is_model("baseline_cnn") and is_known_backbone("baseline_cnn") and is_known_backbone("resnet18")
    assert not is_known_backbone("resnet_999_not_a_model")
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        build_model("nope", SIZE)


def test_build_model_gives_four_logits_for_one_channel_films():
    model = build_model("baseline_cnn", 64)
    assert isinstance(model, BaselineCNN)
    out = model.eval()(torch.zeros(2, 1, 64, 64))
    assert out.shape == (2, len(CLASSES))
    assert model.dense.in_features == 64 * (64 // 16) ** 2  # the dense layer follows the image size
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 3, 64, 64))  # three channels are not what it was built for


def test_too_small_image_is_refused():
    with pytest.raises(ValueError, match="image_size >= 16"):
        build_model("baseline_cnn", 8)


def test_feature_info_names_the_last_relu_of_the_conv_stack():
    model = fresh()
    name = model.feature_info[-1]["module"]
    target = model.get_submodule(name)
    features = list(model.features.named_children())
    relus = [n for n, m in features if isinstance(m, nn.ReLU)]
    convs = [int(n) for n, m in features if isinstance(m, nn.Conv2d)]
    assert isinstance(target, nn.ReLU) and name == f"features.{relus[-1]}"
    assert int(relus[-1]) == convs[-1] + 1  # directly after the last conv
    assert model.feature_info[-1]["num_chs"] == model.features[convs[-1]].out_channels


def test_regularization_loss_is_l2_of_the_dense_weights():
    model = fresh()
    assert regularization_loss(model).item() == pytest.approx(1e-4 * model.dense.weight.pow(2).sum().item())
    assert regularization_loss(build_model("resnet10t", SIZE)) is None  # timm models carry none


def test_weights_file_round_trip(tmp_path):
    source, other = fresh(0), fresh(1)
    assert not same_weights(source, other)
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    assert same_weights(build_model("baseline_cnn", SIZE, str(plain)), source)
    ours = tmp_path / "model.pt"  # a tune_ct checkpoint file also serves as weights (its state dict is under "model")
    save_weights(ours, source, meta(1))
    assert same_weights(build_model("baseline_cnn", SIZE, str(ours)), source)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file .*none.pt does not exist"):
        build_model("baseline_cnn", SIZE, str(tmp_path / "none.pt"))


def trained_one_step(model: nn.Module):
    opt = torch.optim.AdamW(model.parameters(), lr=HP["lr"])
    sched = warmup_cosine(opt, epochs=2, steps_per_epoch=3, warmup_epochs=1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, SIZE, SIZE)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    sched.step()
    return opt, sched


def test_checkpoint_round_trip(tmp_path):
    model = fresh()
    opt, sched = trained_one_step(model)
    metrics = {"val_macro_f1": np.float32(0.25), "epoch": 3, "val_confusion_matrix": [[1, 0], [0, 1]]}
    save_checkpoint(tmp_path, model, opt, sched, meta(3), metrics)
    assert {p.name for p in tmp_path.iterdir()} == {CHECKPOINT_FILE, TRAIN_STATE_FILE, METRICS_FILE}

    state = load_train_state(tmp_path)
    assert state.epoch == 3 and load_checkpoint_file(tmp_path / CHECKPOINT_FILE)["classes"] == list(CLASSES)
    assert state.last_metrics == {"val_macro_f1": 0.25, "epoch": 3, "val_confusion_matrix": [[1, 0], [0, 1]]}
    assert state.optimizer["state"] and state.optimizer["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]
    assert state.scheduler["last_epoch"] == 1

    # A fresh optimizer and schedule (built as setup_training builds them) resume where the saved ones stopped,
    # loaded in the order train/loop.py's resume() loads them.
    resumed = fresh(5)
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=HP["lr"])
    sched2 = warmup_cosine(opt2, 2, 3, 1)
    resumed.load_state_dict(state.weights)
    opt2.load_state_dict(state.optimizer)
    sched2.load_state_dict(state.scheduler)
    assert same_weights(resumed, model) and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert sched2.get_last_lr() == sched.get_last_lr() and sched2.last_epoch == 1

    for where in (tmp_path, tmp_path / CHECKPOINT_FILE):  # the folder or its model.pt
        loaded, saved = load_checkpoint_model(where)
        assert same_weights(loaded, model) and not loaded.training
        assert saved == meta(3)
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_checkpoint_without_metrics_has_no_last_report(tmp_path):
    model = fresh()
    opt, sched = trained_one_step(model)
    save_checkpoint(tmp_path, model, opt, sched, meta(1))
    assert not (tmp_path / METRICS_FILE).exists() and load_train_state(tmp_path).last_metrics is None


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_loading_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": fresh().state_dict(), "backbone": "baseline_cnn", "image_size": SIZE, "x": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint_file(path)


def test_saved_metrics_are_plain_json(tmp_path):
    model = fresh()
    opt, sched = trained_one_step(model)
    save_checkpoint(tmp_path, model, opt, sched, meta(2), {"lr": np.float64(1e-3), "n": np.int64(7), "device": "cpu"})
    assert json.loads((tmp_path / METRICS_FILE).read_text()) == {"lr": 1e-3, "n": 7, "device": "cpu"}
