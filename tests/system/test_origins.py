"""Leave-one-origin-out check on real images: two real Ray Train runs, both tested on the locked test split."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers.films import make_small_dataset

from tune_ct.data.files import CLASSES
from tune_ct.data.manifest import load


def test_leave_one_origin_out(tmp_path, data_dir, sources_csv):
    (tmp_path / "fixed.yaml").write_text(
        "params: {backbone: baseline_cnn, image_size: 32, lr: 0.003, batch_size: 16, epochs: 1}\n")
    out = tmp_path / "origins.json"
    # 40 real films per class (their origins: COVID, LO and most Normal from adult collections, 4 Normal and all
    # Viral Pneumonia from kermany-pediatric): a manifest over the whole set would take most of this test's time.
    data = make_small_dataset(data_dir, tmp_path / "data" / "COVID-19_Radiography_Dataset", per_class=40)
    proc = subprocess.run(
        [sys.executable, "-m", "tune_ct.origins", "--data", str(data), "--sources", str(sources_csv),
         "--holdout", "kermany-pediatric", "--config", "fixed.yaml", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Leave-one-origin-out: kermany-pediatric" in proc.stdout
    result = json.loads(out.read_text())
    # kermany-pediatric supplies every Viral Pneumonia film: without it that class has no training images.
    assert result["classes_without_training_images"] == ["Viral Pneumonia"]
    without = result["train_images"]["without_kermany-pediatric"]
    assert 0 < without < result["train_images"]["all_origins"]

    manifest = load(next((tmp_path / ".tune_ct" / "manifests").glob("*.json")))
    test_files = {e.file for e in manifest.entries if e.split == "test"}
    assert test_files
    for model in result["models"].values():
        assert model["heldout_n"] > 0 and model["other_origins_n"] > 0
        assert model["heldout_n"] + model["other_origins_n"] <= len(test_files)
        assert abs(sum(model["heldout_predicted_as"].values()) - 1.0) < 1e-6
        assert set(model["heldout_recall"]) <= set(CLASSES)


def test_unknown_holdout_origin_is_named(tmp_path, data_dir, sources_csv):
    proc = subprocess.run(
        [sys.executable, "-m", "tune_ct.origins", "--data", str(data_dir), "--sources", str(sources_csv),
         "--holdout", "no-such-hospital", "--limit-per-class", "10"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "no-such-hospital" in proc.stderr and "kermany-pediatric" in proc.stderr
