"""Invariance the search can choose: acquisition augmentation (gamma, blur/sharpen, noise), per-film
standardisation inside the network (so evaluation, predict, ONNX and the served model apply it as training did),
and BatchNorm statistics recomputed on clean training films. Real films from the shared set."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.films import checkpoint_meta
from tune_ct.model.augment import Augment, augment, to_model_input
from tune_ct.model.checkpoint import load_checkpoint_model, save_weights
from tune_ct.model.networks import build_model
from tune_ct.train.hyperparameters import Hyperparameters, check_value, HyperparameterError


@pytest.fixture(scope="module")
def films(data_dir) -> torch.Tensor:
    """Eight real films at 64 px, uint8 (B, H, W)."""
    files = sorted((data_dir / "COVID" / "images").iterdir())[:4] + sorted((data_dir / "Normal" / "images").iterdir())[:4]
    return torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("L").resize((64, 64))) for f in files]))


def seeded(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@pytest.mark.parametrize("aug", [Augment(gamma=0.5), Augment(blur=1.0), Augment(noise=0.1)])
def test_acquisition_augmentation_changes_each_film_its_own_way_and_repeats_with_its_seed(films, aug):
    plain = to_model_input(films)
    out = augment(films, aug, seeded(3))
    assert out.shape == plain.shape and torch.isfinite(out).all()
    changed = (out - plain).abs().flatten(1).mean(1)
    assert (changed > 1e-3).all() and changed.std() > 0  # every film changed, by its own draw
    assert torch.equal(out, augment(films, aug, seeded(3))) and not torch.equal(out, augment(films, aug, seeded(4)))


def test_sharpening_and_blurring_are_the_two_signs_of_one_draw(films):
    """A film's local contrast (mean absolute difference of neighbouring pixels) drops when blurred and rises
    when sharpened: the blur setting draws both."""
    out = augment(films, Augment(blur=1.0), seeded(0))[:, 0]
    plain = to_model_input(films)[:, 0]

    def edges(x):
        return (x[:, 1:, :] - x[:, :-1, :]).abs().mean(dim=(1, 2))

    ratio = edges(out) / edges(plain)
    assert (ratio < 0.95).any() and (ratio > 1.05).any()


def test_the_space_can_choose_the_levers_and_refuses_values_they_cannot_take():
    hp = Hyperparameters.from_config({"aug_gamma": 0.3, "aug_blur": 0.5, "aug_noise": 0.05, "film_norm": "zscore",
                                      "bn_recalibrate": True})
    assert hp.augment == Augment(gamma=0.3, blur=0.5, noise=0.05)
    with pytest.raises(HyperparameterError, match="film_norm must be one of none, zscore, percentile"):
        check_value("params.film_norm", "film_norm", "minmax")
    with pytest.raises(HyperparameterError, match=r"outside the allowed range \[0.0, 0.2\]"):
        check_value("params.aug_noise", "aug_noise", 0.5)


@pytest.mark.parametrize("how", ["zscore", "percentile"])
def test_a_standardised_network_sees_a_film_the_same_at_any_exposure(films, how):
    """Another hospital's exposure and window (a brighter, flatter film) change nothing the network sees."""
    torch.manual_seed(0)
    model = build_model("resnet10t", 64, film_norm=how).eval()
    shifted = (films.float() * 0.6 + 70).round().to(torch.uint8)  # brighter and flatter, within 0..255
    with torch.no_grad():
        a, b = model(to_model_input(films)), model(to_model_input(shifted))
        plain = build_model("resnet10t", 64).eval()
        plain.load_state_dict(model.state_dict())
        c, d = plain(to_model_input(films)), plain(to_model_input(shifted))
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # rounding to uint8 leaves a little
    assert (c - d).abs().max() > 5 * (a - b).abs().max()  # without it the same weights see a different film


def test_the_standardisation_follows_the_checkpoint_to_every_reader(films, tmp_path):
    """Saved and rebuilt (what evaluation, Grad-CAM, predict, the registry and the served model load), the network
    standardises as it did in training; the ONNX export carries it too."""
    from tune_ct.registry.onnx_export import export_checked

    torch.manual_seed(1)
    model = build_model("resnet10t", 64, film_norm="percentile").eval()
    save_weights(tmp_path / "model.pt", model, checkpoint_meta("resnet10t", 64, hp={"film_norm": "percentile"}))
    loaded, meta = load_checkpoint_model(tmp_path / "model.pt")
    x = to_model_input(films)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
        unhooked = build_model("resnet10t", 64).eval()
        unhooked.load_state_dict(loaded.state_dict())
        assert not torch.allclose(unhooked(x), model(x), atol=1e-3)
    (tmp_path / "onnx").mkdir()
    check = export_checked(loaded, x, tmp_path / "onnx")
    assert check.path is not None and check.max_diff <= 1e-4, check.reason


def test_batchnorm_statistics_are_recomputed_on_clean_training_films(data_dir, tmp_path):
    """After an epoch the running statistics are those of clean training films (an equal-weight average), not the
    momentum average of augmented batches: recomputing twice gives the same, and they differ from training's."""
    from helpers.films import make_small_dataset
    from tune_ct.data.prepare import DataSettings, prepare
    from tune_ct.data.workdir import WorkFolder
    from tune_ct.train.loop import LoopContext, recalibrate_batchnorm, run_epoch, setup_training
    from tune_ct.train.settings import TrialSettings

    root = make_small_dataset(data_dir, tmp_path / "ds", per_class=12)
    work = WorkFolder(tmp_path / "work")
    prep = prepare(DataSettings(root, work))
    settings = TrialSettings(str(prep.trainval_path), str(work.cache), str(tmp_path / "runs"), "t")
    ctx = LoopContext(0, 1, torch.device("cpu"), lambda m: m, lambda *a: 0.0, lambda: None)
    hp = Hyperparameters(backbone="resnet10t", image_size=32, batch_size=8, epochs=1, aug_noise=0.2, aug_gamma=0.8)
    training = setup_training(hp, settings, ctx)
    run_epoch(training, settings, ctx, 0)
    bn = next(m for m in training.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    trained = bn.running_mean.clone()
    assert recalibrate_batchnorm(training, ctx, seed=0)
    first = bn.running_mean.clone()
    assert recalibrate_batchnorm(training, ctx, seed=0)
    assert torch.allclose(bn.running_mean, first, atol=1e-5) and not torch.allclose(first, trained, atol=1e-3)
    assert bn.momentum == 0.1  # training's momentum is given back
    # With bn_recalibrate the epoch itself ends with these statistics, before its val metrics are taken.
    training = setup_training(dataclasses.replace(hp, bn_recalibrate=True), settings, ctx)
    run_epoch(training, settings, ctx, 0)
    bn = next(m for m in training.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    after_epoch = bn.running_mean.clone()
    recalibrate_batchnorm(training, ctx, settings.seed)
    assert torch.allclose(bn.running_mean, after_epoch, atol=1e-5)


def test_group_norm_replaces_batch_norm_and_follows_the_checkpoint(films, tmp_path):
    """norm_layer: group builds the backbone with GroupNorm only (no training statistics to carry to another
    hospital); saved and rebuilt, and exported to ONNX, it computes what it did; a film's logits do not depend on
    the other films of its batch, as they do with BatchNorm in training mode."""
    from tune_ct.registry.onnx_export import export_checked

    torch.manual_seed(2)
    model = build_model("resnet10t", 64, norm_layer="group")
    kinds = {type(m).__name__ for m in model.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)
    x = to_model_input(films)
    with torch.no_grad():
        assert torch.allclose(model.train()(x)[:1], model(x[:1]), atol=1e-5)  # batch-independent, even training
    model.eval()
    save_weights(tmp_path / "model.pt", model, checkpoint_meta("resnet10t", 64, hp={"norm_layer": "group"}))
    loaded, _ = load_checkpoint_model(tmp_path / "model.pt")
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    (tmp_path / "onnx").mkdir()
    check = export_checked(loaded, x, tmp_path / "onnx")
    assert check.path is not None and check.max_diff <= 1e-4, check.reason


def test_group_norm_is_refused_where_it_cannot_be_built():
    with pytest.raises(ValueError, match="norm_layer: group trains resnet10t from scratch"):
        build_model("resnet10t", 64, pretrained=True, norm_layer="group")
    with pytest.raises(ValueError, match="norm_layer: group is not possible for backbone baseline_cnn"):
        build_model("baseline_cnn", 64, norm_layer="group")
    with pytest.raises(HyperparameterError, match="norm_layer"):
        check_value("params.norm_layer", "norm_layer", "layer")
