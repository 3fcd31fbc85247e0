"""`pretrained: true` loads timm's weights through the Hugging Face hub cache (HF_HOME), offline from that cache
(HF_HUB_OFFLINE=1), and a search refuses, before any compute, weights that are neither cached nor reachable.
Nothing is downloaded: the test builds a real hub-layout cache of resnet10t's weights itself. Each case runs in
its own process, as huggingface_hub reads HF_HOME and HF_HUB_OFFLINE once, when it is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

from helpers.search_cli import REPO
BACKBONE, REPO_ID = "resnet10t", "timm/resnet10t.c3_in1k"  # timm's default pretrained tag of resnet10t
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hub_cache(home: Path) -> Path:
    """A Hugging Face cache as huggingface_hub writes it: hub/models--ORG--NAME/refs/main names the snapshot,
    snapshots/COMMIT/ holds the files. The weights are a fresh resnet10t's (ImageNet layout: 3 channels, 1000
    classes), so the test can tell they were loaded."""
    import safetensors.torch
    import timm

    repo = home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    model = timm.create_model(BACKBONE, pretrained=False)
    safetensors.torch.save_file(model.state_dict(), snapshot / "model.safetensors")
    return snapshot / "model.safetensors"


def run_py(code: str, home: Path, offline: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(home), **({"HF_HUB_OFFLINE": "1"} if offline else {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


LOAD_AND_COMPARE = """
    import json, sys, torch, safetensors.torch
    from tune_ct.model.networks import build_model, pretrained_weights
    saved = safetensors.torch.load_file(sys.argv[1] if len(sys.argv) > 1 else {file!r})
    print(json.dumps({{"cached": str(pretrained_weights("resnet10t"))}}))
    model = build_model("resnet10t", 64, weights={weights!r}, pretrained=True)
    state = model.state_dict()
    # timm adapts the first conv to one channel (summing over RGB) and replaces the 1000-class classifier.
    assert torch.allclose(state["conv1.0.weight"], saved["conv1.0.weight"].sum(1, keepdim=True), atol=1e-5)
    assert torch.equal(state["layer4.0.conv2.weight"], saved["layer4.0.conv2.weight"])
    assert state["fc.weight"].shape == (4, saved["fc.weight"].shape[1])
    print("loaded")
"""


def test_pretrained_weights_load_offline_from_the_hub_cache(tmp_path):
    file = make_hub_cache(tmp_path / "hf")
    proc = run_py(LOAD_AND_COMPARE.format(file=str(file), weights=None), tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[0])["cached"] == str(file)
    assert proc.stdout.splitlines()[-1] == "loaded"


def test_an_empty_cache_offline_is_refused_naming_the_model_and_the_cache(tmp_path):
    proc = run_py("""
        from tune_ct.model.networks import PretrainedError, pretrained_weights
        try:
            pretrained_weights("resnet10t")
        except PretrainedError as exc:
            print(exc)
        assert pretrained_weights("baseline_cnn") is None  # no published weights: it trains from scratch
    """, tmp_path / "empty")
    assert proc.returncode == 0, proc.stderr[-3000:]
    message = proc.stdout
    assert BACKBONE in message and REPO_ID in message and str(tmp_path / "empty" / "hub") in message
    assert "HF_HUB_OFFLINE" in message and "--weights resnet10t=FILE" in message


def test_a_weights_file_wins_over_pretrained(tmp_path):
    """--weights FILE with pretrained: true never reads the hub (the cache is empty and offline)."""
    file = make_hub_cache(tmp_path / "hf")
    proc = run_py("""
        import torch, safetensors.torch
        from tune_ct.model.networks import build_model
        saved = safetensors.torch.load_file(%r)
        model = build_model("resnet10t", 64, weights=%r, pretrained=True)
        assert torch.equal(model.state_dict()["layer4.0.conv2.weight"], saved["layer4.0.conv2.weight"])
        print("loaded")
    """ % (str(file), str(file)), tmp_path / "empty")
    assert proc.returncode == 0 and proc.stdout.strip() == "loaded", proc.stderr[-3000:]


def test_search_refuses_uncached_pretrained_weights_before_any_compute(tmp_path, small_dataset):
    space = {"search": {"num_samples": 1}, "params": {"backbone": {"choice": ["baseline_cnn", BACKBONE]},
                                                      "pretrained": True, "image_size": 32, "epochs": 1}}
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(space))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "empty"), HF_HUB_OFFLINE="1")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tune_ct.search", "--data", str(small_dataset), "--space",
                           str(tmp_path / "pre.yaml")], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error: pretrained: true: the weights of resnet10t" in proc.stderr
    # Before any compute: no manifest hashed, no Ray started, no MLflow run.
    assert not (tmp_path / ".tune_ct").exists() and not (tmp_path / "ray_results").exists()
    assert "Ray dashboard" not in proc.stdout and not (tmp_path / "mlflow.db").exists()
    assert time.monotonic() - started < 60


def test_the_search_check_passes_with_a_cache_or_a_weights_file(tmp_path):
    file = make_hub_cache(tmp_path / "hf")
    check = """
        from pathlib import Path
        import yaml
        from tune_ct.search.checks import check_pretrained
        from tune_ct.train.space import load_space
        Path("%s").write_text(yaml.safe_dump({"params": {"backbone": "resnet10t", "pretrained": {"choice": [True, False]}}}))
        check_pretrained(load_space("%s"), %s)
        print("ok")
    """
    space = tmp_path / "s.yaml"
    cached = run_py(check % (space, space, "{}"), tmp_path / "hf")
    assert cached.returncode == 0 and cached.stdout.strip() == "ok", cached.stderr[-3000:]
    with_file = run_py(check % (space, space, repr({BACKBONE: str(file)})), tmp_path / "empty")
    assert with_file.returncode == 0 and with_file.stdout.strip() == "ok", with_file.stderr[-3000:]
    without = run_py(check % (space, space, "{}"), tmp_path / "empty")
    assert without.returncode != 0 and "PretrainedError" in without.stderr
