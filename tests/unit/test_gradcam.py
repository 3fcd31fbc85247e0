"""Grad-CAM maps on real films and the lung-focus score on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tune_ct.data.files import CLASSES, decode_file, resize
from tune_ct.evaluate.gradcam import cam_maps, load_mask, lung_focus, target_layer
from tune_ct.model.networks import build_model


def test_lung_focus_known_share():
    mask = np.zeros((8, 8), dtype=bool)
    mask[:, :4] = True
    cam = np.zeros((8, 8), dtype=np.float32)
    cam[0, 0] = 3.0  # inside
    cam[0, 7] = 1.0  # outside
    assert lung_focus(cam, mask) == pytest.approx(0.75)
    assert np.isnan(lung_focus(np.zeros((8, 8)), mask))
    with pytest.raises(ValueError, match="resize the mask"):
        lung_focus(cam, np.ones((4, 4), dtype=bool))


def test_mask_is_found_by_file_name_and_resized_to_the_image(tmp_path):
    (tmp_path / "Viral Pneumonia" / "masks").mkdir(parents=True)
    mask = np.zeros((256, 256), dtype=np.uint8)
    mask[:, :128] = 255  # left half is lung
    Image.fromarray(mask).save(tmp_path / "Viral Pneumonia" / "masks" / "x.png")
    loaded = load_mask(tmp_path, "Viral Pneumonia/images/x.png", 64)
    assert loaded.shape == (64, 64) and loaded[:, :30].all() and not loaded[:, 34:].any()
    assert load_mask(tmp_path, "COVID/images/x.png", 64) is None
    cam = np.zeros((64, 64), dtype=np.float32)
    cam[10:20, 5:15] = 1.0
    assert lung_focus(cam, loaded) == pytest.approx(1.0)


@pytest.mark.parametrize("backbone", ["baseline_cnn", "resnet10t"])
def test_cam_maps_have_the_image_size_and_finite_values(data_dir, backbone):
    torch.manual_seed(0)
    model = build_model(backbone, 64).eval()
    assert not isinstance(target_layer(model), nn.Linear)
    files = [next(iter(sorted((data_dir / c / "images").iterdir()))) for c in CLASSES]
    pixels = np.stack([resize(decode_file(f)[0], 64) for f in files])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cams = cam_maps(model, pixels, [0, 1, 2, 3])
    assert cams.shape == (4, 64, 64) and np.isfinite(cams).all()
    assert cams.min() >= 0.0 and cams.max() <= 1.0 + 1e-6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # works on a copy
