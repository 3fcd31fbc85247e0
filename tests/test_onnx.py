"""The ONNX fast path on real films: the export and its check (baseline_cnn, resnet10t), `predict --runtime onnx`
against `--runtime torch` on a version in a real SQLite MLflow store, a network the exporter rejects registered
without the export (the reason in its tag), a trace that froze a branch refused by the check, and the rule
itself on real probability arrays. No Ray, no server: untrained networks at small sizes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from PIL import Image

from tune_ct.commands import predict
from tune_ct.data.files import CLASSES, decode_file, resize
from tune_ct.model.augment import to_model_input
from tune_ct.model.networks import BaselineCNN, build_model
from tune_ct.registry.models import load_model, log_and_register
from tune_ct.registry.onnx_export import (OPSET, TOLERANCE, export_checked, max_prob_diff, onnx_network,
                                          onnx_session)
from tune_ct.registry.predict import probabilities, torch_network
from tune_ct.track.runs import ensure_experiment

from test_registry import write_dicom

NAME = "onnx-test"
SIZE = 32


def real_films(data_dir, per_class: int = 2, start: int = 40):
    return [f for c in CLASSES for f in sorted((data_dir / c / "images").iterdir())[start : start + per_class]]


def model_input(files, size: int) -> torch.Tensor:
    return to_model_input(torch.from_numpy(np.stack([resize(decode_file(f)[0], size) for f in files])))


def saved_for(backbone: str, size: int) -> dict:
    return {"model": None, "backbone": backbone, "image_size": size, "classes": list(CLASSES), "hp": {}, "epoch": 0}


@pytest.mark.parametrize("backbone,size", [("baseline_cnn", 64), ("resnet10t", 64)])
def test_export_is_checked_on_real_films(data_dir, tmp_path, backbone, size):
    torch.manual_seed(0)
    model = build_model(backbone, size).eval()
    x = model_input(real_films(data_dir), size)
    check = export_checked(model, x, tmp_path)
    assert check.path == tmp_path / "model.onnx" and check.path.is_file()
    assert check.max_diff <= TOLERANCE and check.tag == f"ok (max diff {check.max_diff:.1e})"
    graph = onnx.load(str(check.path))
    onnx.checker.check_model(graph)
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == OPSET
    # A batch size the trace never saw (5 films, exported with 8), threads set: same probabilities.
    theirs = probabilities(onnx_network(onnx_session(check.path, threads=1)), x[:5])
    assert max_prob_diff(theirs, probabilities(torch_network(model), x[:5])) <= TOLERANCE


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("onnx_registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {"uri": uri, "client": client, "root": root,
            "exp": ensure_experiment(client, "onnx-test", root / "artifacts")}


def register(store, data_dir, model) -> str:
    example = np.stack([resize(decode_file(f)[0], SIZE) for f in real_films(data_dir, 1, start=60)])
    run = store["client"].create_run(store["exp"])
    _, version = log_and_register(store["uri"], run.info.run_id, model, saved_for("baseline_cnn", SIZE), example,
                                  NAME)
    return str(version)


def run_predict(store, capsys, version: str, files, *extra: str) -> tuple[int, dict | None, str]:
    rc = predict.main(["--model", f"models:/{NAME}/{version}", "--tracking-uri", store["uri"], "--json", *extra,
                       *map(str, files)])
    out = capsys.readouterr()
    return rc, json.loads(out.out) if out.out.strip() else None, out.err


def test_predict_onnx_equals_torch_on_real_films(store, data_dir, tmp_path, capsys):
    torch.manual_seed(1)
    version = register(store, data_dir, build_model("baseline_cnn", SIZE))
    tag = store["client"].get_model_version(NAME, version).tags["tune_ct.onnx"]
    assert tag.startswith("ok (max diff ") and float(tag[len("ok (max diff "):-1]) <= TOLERANCE
    films = real_films(data_dir, 2, start=100)
    dcm = tmp_path / "film.dcm"
    write_dicom(dcm, np.asarray(Image.open(films[0])))
    bad = tmp_path / "cut.png"
    bad.write_bytes(films[1].read_bytes()[:150])
    files = [*films, dcm, bad]
    rc_t, torch_out, _ = run_predict(store, capsys, version, files, "--runtime", "torch")
    rc_o, onnx_out, _ = run_predict(store, capsys, version, files, "--runtime", "onnx", "--threads", "1")
    assert rc_t == rc_o == 1  # the cut-off film is an error under both runtimes, the others are answered
    for a, b in zip(torch_out["predictions"], onnx_out["predictions"], strict=True):
        assert a["file"] == b["file"] and (a["error"] is None) == (b["error"] is None)
        if a["error"] is None:
            assert max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in CLASSES) <= TOLERANCE
            assert a["predicted"] == b["predicted"]
    assert onnx_out["predictions"][-1]["error"] and "dicom" in onnx_out["predictions"][-2]["conversion"]


class ResizesInside(BaselineCNN):
    """A baseline CNN that resizes its input itself with antialiasing (torch's aten::_upsample_bilinear2d_aa):
    the classic ONNX exporter has no translation for it. Same parameters as baseline_cnn."""

    def __init__(self, size: int):
        super().__init__(size)
        self.side = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True))


def test_export_the_exporter_rejects_registers_without_onnx(store, data_dir, capsys):
    version = register(store, data_dir, ResizesInside(SIZE))
    tag = store["client"].get_model_version(NAME, version).tags["tune_ct.onnx"]
    assert tag.startswith("absent: export failed: ") and "_upsample_bilinear2d_aa" in tag
    model, meta = load_model(f"models:/{NAME}/{version}", store["uri"])
    assert isinstance(model, BaselineCNN) and meta["onnx_file"] is None and meta["onnx"] == tag
    films = real_films(data_dir, 1, start=120)
    rc, _, err = run_predict(store, capsys, version, films, "--runtime", "onnx")
    assert rc == 2 and "carries no ONNX export" in err and "_upsample_bilinear2d_aa" in err
    rc, out, _ = run_predict(store, capsys, version, films, "--runtime", "torch")
    assert rc == 0 and all(p["predicted"] in CLASSES for p in out["predictions"])


class ExposureGate(BaselineCNN):
    """Answers COVID outright for a batch brighter than `limit`: a data-dependent branch, which the tracing
    exporter freezes to the branch its example batch took (with a TracerWarning, not an error)."""

    def __init__(self, size: int, limit: float):
        super().__init__(size)
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if x.mean() > self.limit:
            logits = logits + torch.tensor([8.0, 0.0, 0.0, 0.0])
        return logits


def test_a_trace_that_froze_a_branch_is_refused(data_dir, tmp_path):
    x = model_input(real_films(data_dir), SIZE)
    means = x.mean(dim=(1, 2, 3))
    assert (means > x.mean()).any() and (means < x.mean()).any(), "the films should differ in brightness"
    torch.manual_seed(2)
    check = export_checked(ExposureGate(SIZE, limit=float(x.mean())).eval(), x, tmp_path)
    # The trace took the batch's branch (not brighter than itself); a bright film alone takes the other in PyTorch.
    assert check.path is None and not (tmp_path / "model.onnx").exists()
    assert check.tag.startswith("absent: max probability difference ") and "> 1e-04" in check.tag


def test_the_tolerance_rule_on_real_probability_arrays(data_dir):
    torch.manual_seed(3)
    model = build_model("baseline_cnn", SIZE).eval()
    probs = probabilities(torch_network(model), model_input(real_films(data_dir), SIZE))
    assert max_prob_diff(probs, probs.copy()) == 0.0
    shifted = probs.copy()
    shifted[0] += np.array([2 * TOLERANCE, -2 * TOLERANCE, 0, 0], np.float32)  # still sums to 1
    assert max_prob_diff(probs, shifted) == pytest.approx(2 * TOLERANCE, rel=1e-3)  # over the limit: refused
    with pytest.raises(ValueError, match="same films"):
        max_prob_diff(probs, probs[:-1])
