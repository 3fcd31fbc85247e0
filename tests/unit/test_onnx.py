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

from tune_ct.commands import evaluate, predict
from tune_ct.data.files import CLASSES, decode_file, resize
from tune_ct.model.augment import to_model_input
from tune_ct.model.networks import BaselineCNN, build_model
from tune_ct.registry.models import load_model, log_and_register
from tune_ct.registry.onnx_export import (OPSET, TOLERANCE, export_checked, max_prob_diff, onnx_network,
                                          onnx_session)
from tune_ct.registry.classify import probabilities, torch_network
from tune_ct.track.runs import ensure_experiment

from helpers.films import checkpoint_meta, twelve_bit_dicom as write_dicom

NAME = "onnx-test"
SIZE = 32


def real_films(data_dir, per_class: int = 2, start: int = 40):
    return [f for c in CLASSES for f in sorted((data_dir / c / "images").iterdir())[start : start + per_class]]


def model_input(files, size: int) -> torch.Tensor:
    return to_model_input(torch.from_numpy(np.stack([resize(decode_file(f)[0], size) for f in files])))


def saved_for(backbone: str, size: int):
    return checkpoint_meta(backbone, size)


@pytest.mark.parametrize("backbone,size", [("baseline_cnn", 64), ("resnet10t", 32)])
def test_export_is_checked_on_real_films(data_dir, tmp_path, backbone, size):
    torch.manual_seed(0)
    model = build_model(backbone, size).eval()
    x = model_input(real_films(data_dir, 1), size)
    check = export_checked(model, x, tmp_path)
    assert check.path == tmp_path / "model.onnx" and check.path.is_file()
    assert check.max_diff <= TOLERANCE and check.tag == f"ok (max diff {check.max_diff:.1e})"
    graph = onnx.load(str(check.path))
    onnx.checker.check_model(graph)
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == OPSET
    # A batch size the trace never saw (3 films, exported with 4), threads set: same probabilities.
    theirs = probabilities(onnx_network(onnx_session(check.path, threads=1)), x[:3])
    assert max_prob_diff(theirs, probabilities(torch_network(model), x[:3])) <= TOLERANCE


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


@pytest.fixture(scope="module")
def exported(store, data_dir) -> str:
    """A version with its ONNX export."""
    torch.manual_seed(1)
    return register(store, data_dir, build_model("baseline_cnn", SIZE))


class ResizesInside(BaselineCNN):
    """A baseline CNN that resizes its input itself with antialiasing (torch's aten::_upsample_bilinear2d_aa):
    the classic ONNX exporter has no translation for it. Same parameters as baseline_cnn."""

    def __init__(self, size: int):
        super().__init__(size)
        self.side = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True))


@pytest.fixture(scope="module")
def rejected(store, data_dir) -> str:
    """A version whose network the exporter rejects."""
    torch.manual_seed(2)
    return register(store, data_dir, ResizesInside(SIZE))


def test_predict_onnx_equals_torch_on_real_films(store, exported, data_dir, tmp_path, capsys):
    version = exported
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


def test_export_the_exporter_rejects_registers_without_onnx(store, rejected, data_dir, capsys):
    version = rejected
    tag = store["client"].get_model_version(NAME, version).tags["tune_ct.onnx"]
    assert tag.startswith("absent: export failed: ") and "_upsample_bilinear2d_aa" in tag
    model, loaded = load_model(f"models:/{NAME}/{version}", store["uri"])
    assert isinstance(model, BaselineCNN) and loaded.onnx_file is None and loaded.metadata["onnx"] == tag
    films = real_films(data_dir, 1, start=120)
    rc, _, err = run_predict(store, capsys, version, films, "--runtime", "onnx")
    assert rc == 2 and "carries no ONNX export" in err and "_upsample_bilinear2d_aa" in err
    rc, out, _ = run_predict(store, capsys, version, films, "--runtime", "torch")
    assert rc == 0 and all(p["predicted"] in CLASSES for p in out["predictions"])


def register_the_old_way(store, data_dir, tmp_path) -> str:
    """A version as tune_ct registered them before the pyfunc: a pickle-format pytorch-flavor model whose
    weights-only checkpoint is extra_files/model.pt (the log_model call of that code, verbatim in substance)."""
    import mlflow
    from mlflow.models import infer_signature

    from tune_ct.model.checkpoint import save_weights
    from tune_ct.registry.models import model_metadata, pip_requirements
    from tune_ct.track.uri import connect

    torch.manual_seed(4)
    model = build_model("baseline_cnn", SIZE).eval()
    x = model_input(real_films(data_dir, 1), SIZE)
    weights = tmp_path / "model.pt"
    save_weights(weights, model, saved_for("baseline_cnn", SIZE))
    connect(store["uri"])
    with mlflow.start_run(run_id=store["client"].create_run(store["exp"]).info.run_id):
        signature = infer_signature(x.numpy(), model(x).detach().numpy())
        info = mlflow.pytorch.log_model(
            model, name="model", serialization_format="pickle", signature=signature,
            metadata=model_metadata(saved_for("baseline_cnn", SIZE)),
            extra_files=[str(weights)], pip_requirements=pip_requirements(), registered_model_name=NAME)
    return str(info.registered_model_version)


def test_versions_registered_before_the_export_keep_working(store, data_dir, tmp_path, capsys):
    import mlflow

    version = register_the_old_way(store, data_dir, tmp_path)
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/{version}", dst_path=str(tmp_path / "dl"))
    assert (tmp_path / "dl" / "extra_files" / "model.pt").is_file() and not (tmp_path / "dl" / "artifacts").exists()
    model, loaded = load_model(f"models:/{NAME}/{version}", store["uri"])
    assert isinstance(model, BaselineCNN) and loaded.onnx_file is None and local
    films = real_films(data_dir, 1, start=130)
    rc, out, _ = run_predict(store, capsys, version, films, "--gradcam", str(tmp_path / "cams"))
    assert rc == 0 and all(Image.open(p["gradcam"]).mode == "RGB" for p in out["predictions"])
    rc, _, err = run_predict(store, capsys, version, films, "--runtime", "onnx")
    assert rc == 2 and "registered before the ONNX export" in err
    hospital = tmp_path / "hospital"
    for label in ("COVID", "Normal"):
        (hospital / label).mkdir(parents=True)
        for f in real_films(data_dir, 3, start=140):
            if f.parent.parent.name == label:
                (hospital / label / f.name).write_bytes(f.read_bytes())
    rc = evaluate.main(["--model", f"models:/{NAME}/{version}", "--external", str(hospital), "--tracking-uri",
                        store["uri"], "--workdir", str(tmp_path / "wd"), "--bootstrap", "50"])
    assert rc == 0 and "macro" in capsys.readouterr().out.lower()


def test_the_served_model_picks_its_runtime(store, exported, rejected):
    import mlflow

    from tune_ct.registry.serving import ServingError
    from tune_ct.track.uri import connect

    connect(store["uri"])

    def runtime(version: str, **config) -> str:
        loaded = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}", model_config=config or None)
        return loaded.unwrap_python_model().served.runtime

    assert runtime(exported) == "onnxruntime" and runtime(exported, runtime="torch", threads=1) == "torch"
    assert runtime(rejected) == "torch"  # auto: no export, so PyTorch
    with pytest.raises(ServingError, match="carries no ONNX export"):
        runtime(rejected, runtime="onnx")
    with pytest.raises(ServingError, match="TUNE_CT_THREADS / model_config 'threads'"):
        runtime(exported, threads="two")


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
