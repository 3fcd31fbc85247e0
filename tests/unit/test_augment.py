"""Batch augmentation and input normalisation (tune_ct/model/augment.py), on small uint8 batches on the CPU."""

from __future__ import annotations

import pytest
import torch

from tune_ct.train.hyperparameters import Hyperparameters
from tune_ct.model.augment import MEAN, STD, Augment, augment, to_model_input

LOW, HIGH = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD  # normalised black and white
STRONG = Augment(rotation_deg=30, crop_scale_min=0.3, brightness=0.4, contrast=0.8, hflip=True)


def films(n: int = 8, side: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_to_model_input_scales_and_adds_the_channel():
    x = torch.tensor([[[0, 255], [51, 128]]], dtype=torch.uint8)
    out = to_model_input(x)
    assert out.shape == (1, 1, 2, 2) and out.dtype == torch.float32
    expected = [[-2.0, 2.0], [(51 / 255 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25]]  # (x / 255 - 0.5) / 0.25
    assert out[0, 0].flatten().tolist() == pytest.approx([v for row in expected for v in row], abs=1e-6)


def test_neutral_settings_are_exactly_the_model_input():
    x = films()
    assert not Augment().geometric
    assert torch.equal(augment(x, Augment(), seeded(0)), to_model_input(x))


def test_strong_augmentation_keeps_shape_dtype_and_range():
    x = films(n=6, side=20)
    out = augment(x, STRONG, seeded(1))
    assert out.shape == (6, 1, 20, 20) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.min() >= LOW - 1e-6 and out.max() <= HIGH + 1e-6
    assert not torch.allclose(out, to_model_input(x))  # it did change the films


def test_same_seed_same_batch_and_another_seed_another_batch():
    x = films()
    a, b = augment(x, STRONG, seeded(7)), augment(x, STRONG, seeded(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment(x, STRONG, seeded(8)))


def test_parameters_are_drawn_per_image_not_per_batch():
    x = films(n=1).repeat(8, 1, 1)  # eight copies of one film
    out = augment(x, Augment(rotation_deg=20), seeded(0))
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) == 8


def test_hflip_mirrors_about_half_the_films():
    # Left half black, right half white: a mirrored film is white on the left.
    x = torch.zeros(64, 16, 16, dtype=torch.uint8)
    x[:, :, 8:] = 255
    out = augment(x, Augment(hflip=True), seeded(0))[:, 0]
    left, right = out[:, :, :4].mean(dim=(1, 2)), out[:, :, -4:].mean(dim=(1, 2))
    mirrored = left > right
    assert ((left - right).abs() > 2.0).all()  # each film is clearly one way or the other
    assert 10 < int(mirrored.sum()) < 54  # both ways occur (a fair coin per image)
    plain = augment(x, Augment(), seeded(0))[:, 0]
    assert (plain[:, :, :4].mean(dim=(1, 2)) < plain[:, :, -4:].mean(dim=(1, 2))).all()  # off: never mirrored


def test_brightness_shifts_each_film_by_one_bounded_amount():
    x = torch.full((16, 8, 8), 128, dtype=torch.uint8)
    out = augment(x, Augment(brightness=0.1), seeded(0))
    shift = out - to_model_input(x)
    per_film = shift.flatten(1)
    assert torch.allclose(per_film, per_film[:, :1].expand_as(per_film), atol=1e-6)  # one shift per film
    assert per_film.abs().max() <= 0.1 / STD + 1e-6 and per_film.abs().max() > 0


def test_contrast_keeps_a_flat_film_flat_and_its_mean():
    flat = torch.full((4, 8, 8), 100, dtype=torch.uint8)
    assert torch.allclose(augment(flat, Augment(contrast=0.9), seeded(0)), to_model_input(flat), atol=1e-6)
    x = films(n=4)
    out = augment(x, Augment(contrast=0.5), seeded(0))
    assert not torch.allclose(out, to_model_input(x))


def test_a_trials_config_gives_its_augmentation_with_the_defaults_defined_once():
    def aug(**config):
        return Hyperparameters.from_config(config).augment

    got = aug(aug_rotation_deg=10, aug_crop_scale_min=0.5, aug_brightness=0.1, aug_contrast=0.2, aug_hflip=True, lr=0.1)
    assert got == Augment(rotation_deg=10.0, crop_scale_min=0.5, brightness=0.1, contrast=0.2, hflip=True)
    assert isinstance(got.rotation_deg, float) and got.hflip is True and got.geometric
    assert aug() == Augment()  # the hyperparameters' defaults are the augmentation's: nothing restated
    assert aug(aug_crop_scale_min=0.9).geometric
    assert not aug(aug_brightness=0.3, aug_contrast=0.3).geometric
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        aug(aug_rotaton_deg=5)


def test_hflip_alone_gives_the_film_or_its_mirror():
    x = films(n=16, side=16)
    out, ref = augment(x, Augment(hflip=True), seeded(0)), to_model_input(x)
    for o, r in zip(out, ref):
        assert torch.allclose(o, r, atol=1e-4) or torch.allclose(o, r.flip(-1), atol=1e-4)
