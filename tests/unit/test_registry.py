"""Registry, promotion and predict against a real MLflow store and real films (no mocks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from tune_ct.commands import predict, promote
from tune_ct.data.files import CLASSES, decode_file, resize
from tune_ct.evaluate.gradcam import cam_maps
from tune_ct.model.networks import BaselineCNN, build_model
from tune_ct.registry.models import load_model, log_and_register
from tune_ct.track.runs import ensure_experiment

from helpers.films import checkpoint_meta, make_small_dataset, twelve_bit_dicom

NAME = "cxr-test"
SIZE = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_dir):
    """Two registered versions of an untrained baseline CNN, and the real films they are tested on."""
    root = tmp_path_factory.mktemp("registry")
    dataset = make_small_dataset(data_dir, root / "COVID-19_Radiography_Dataset", per_class=12)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # Both URIs given: MlflowClient(uri) alone takes mlflow's process-wide registry URI, which an earlier test's
    # tune_ct.track.uri.connect() may have pointed at another store.
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = ensure_experiment(client, "registry-test", root / "artifacts")
    example = resize(decode_file(next((dataset / "COVID" / "images").iterdir()))[0], SIZE)[None]
    for seed in (0, 1):
        torch.manual_seed(seed)
        saved = checkpoint_meta("baseline_cnn", SIZE)
        run = client.create_run(exp)
        log_and_register(uri, run.info.run_id, build_model("baseline_cnn", SIZE), saved, example, NAME,
                         {"data": str(dataset)}, {"tune_ct.data": str(dataset)})
    return {"uri": uri, "client": client, "data": dataset, "root": root}


def run_promote(store, tmp_path, version: str, gates: dict, *extra: str) -> int:
    gates_file = tmp_path / "gates.yaml"
    gates_file.write_text(json.dumps(gates))  # JSON is YAML
    return promote.main(["--model", NAME, "--version", version, "--gates", str(gates_file), "--tracking-uri",
                         store["uri"], "--workdir", str(store["root"] / "wd"), *extra])


def aliases(client) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def test_registered_model_loads_weights_only_and_supports_gradcam(store, data_dir):
    model, loaded = load_model(f"models:/{NAME}/1", store["uri"])
    meta = loaded.metadata
    assert isinstance(model, BaselineCNN) and meta["classes"] == list(CLASSES) and meta["image_size"] == SIZE
    assert loaded.checkpoint.classes == tuple(CLASSES) and loaded.checkpoint.image_size == SIZE
    assert meta["preprocessing"]["mean"] == 0.5 and loaded.data == str(store["data"])
    pixels = np.stack([resize(decode_file(next((data_dir / c / "images").iterdir()))[0], SIZE) for c in CLASSES])
    cams = cam_maps(model, pixels)
    assert cams.shape == (4, SIZE, SIZE) and np.isfinite(cams).all()
    # The pickle-format MLflow model (what other MLflow users load) also takes Grad-CAM hooks.
    import mlflow

    pickled = mlflow.pytorch.load_model(f"models:/{NAME}/1")
    assert np.isfinite(cam_maps(pickled, pixels)).all()


def test_promotion_fail_changes_nothing(store, tmp_path, capsys):
    rc = run_promote(store, tmp_path, "1", {"min_macro_f1": 1.0, "min_covid_recall": 0.0})
    assert rc == 1
    assert "FAIL  min_macro_f1" in capsys.readouterr().out
    assert "champion" not in aliases(store["client"])
    assert not any(k.startswith("tune_ct.promotion") for k in store["client"].get_model_version(NAME, "1").tags)


def test_promotion_pass_moves_champion_and_keeps_previous(store, tmp_path):
    client = store["client"]
    open_gates = {"min_macro_f1": 0.0, "min_covid_recall": 0.0, "max_class_drop": 1.0}
    assert run_promote(store, tmp_path, "1", open_gates, "--dry-run") == 0
    assert "champion" not in aliases(client)  # dry run: nothing changed

    assert run_promote(store, tmp_path, "1", open_gates) == 0
    assert aliases(client) == {"champion": "1"}
    tags = client.get_model_version(NAME, "1").tags
    assert tags["tune_ct.promotion.previous_champion"] == "none" and json.loads(tags["tune_ct.promotion.gates"])

    # A candidate that loses more than the allowed per-class margin to the champion stays out. It is built to lose:
    # constant logits predict the class the champion recalls least for every film, so its recall is 0 on the other
    # three, and every other class the champion recalls at all drops by more than the limit of 0.
    champion_recall = json.loads(tags["tune_ct.promotion.metrics"])["recall"]
    assert max(champion_recall.values()) > 0, f"champion v1 recalls no class at all: {champion_recall}"
    weakest = min(CLASSES, key=lambda c: champion_recall[c])
    worse = register_constant_model(store, CLASSES.index(weakest))
    before = {"aliases": aliases(client), "v1": client.get_model_version(NAME, "1").tags,
              "worse": client.get_model_version(NAME, worse).tags}
    strict = {"min_macro_f1": 0.0, "min_covid_recall": 0.0, "max_class_drop": 0.0}
    out = tmp_path / "decision.json"
    assert run_promote(store, tmp_path, worse, strict, "--json", str(out)) == 1
    decision = json.loads(out.read_text())
    assert decision["decision"] == "fail" and str(decision["candidate_version"]) == worse
    assert str(decision["previous_champion"]) == "1" and decision["split"] == "test"
    assert decision["metrics"]["candidate"]["recall"] == {c: float(c == weakest) for c in CLASSES}
    drops = {r["gate"]: r for r in decision["results"] if r["gate"].startswith("max_class_drop[")}
    assert len(drops) == 4
    failed = {r["gate"] for r in decision["results"] if not r["passed"]}
    assert failed == {f"max_class_drop[{c}]" for c in CLASSES if c != weakest and champion_recall[c] > 0}
    assert failed  # the refusal comes from the class-drop gate, the one that needs a champion
    # Refused: aliases and tags exactly as before, on the champion and on the candidate.
    assert aliases(client) == before["aliases"] == {"champion": "1"}
    assert client.get_model_version(NAME, "1").tags == before["v1"]
    assert client.get_model_version(NAME, worse).tags == before["worse"]
    assert not any(k.startswith("tune_ct.promotion") for k in before["worse"])

    assert run_promote(store, tmp_path, "2", open_gates) == 0
    assert aliases(client) == {"champion": "2", "previous": "1"}
    tags = client.get_model_version(NAME, "2").tags
    assert tags["tune_ct.promotion.previous_champion"] == "1"
    assert set(json.loads(tags["tune_ct.promotion.metrics"])["recall"]) == set(CLASSES)


def register_constant_model(store, class_index: int) -> str:
    """Register a baseline CNN whose logits ignore the film (zero last-layer weights): it predicts
    CLASSES[class_index] for every image. Returns its version."""
    client, data = store["client"], store["data"]
    model = build_model("baseline_cnn", SIZE)
    with torch.no_grad():
        model.head[1].weight.zero_()
        model.head[1].bias.copy_(torch.tensor([5.0 if k == class_index else 0.0 for k in range(len(CLASSES))]))
    example = resize(decode_file(next((data / "COVID" / "images").iterdir()))[0], SIZE)[None]
    saved = checkpoint_meta("baseline_cnn", SIZE)
    run = client.create_run(client.get_experiment_by_name("registry-test").experiment_id)
    _, version = log_and_register(store["uri"], run.info.run_id, model, saved, example, NAME, {"data": str(data)},
                                  {"tune_ct.data": str(data)})
    return str(version)


def test_predict_png_dicom_and_a_corrupt_file(store, tmp_path, capsys):
    films = [next((store["data"] / c / "images").iterdir()) for c in ("COVID", "Normal")]
    dcm = tmp_path / "film.dcm"
    twelve_bit_dicom(dcm, np.asarray(Image.open(films[0])))
    bad = tmp_path / "broken.png"
    bad.write_bytes(films[1].read_bytes()[:200])  # a cut-off PNG
    outdir = tmp_path / "cams"
    rc = predict.main(["--model", f"models:/{NAME}/1", "--tracking-uri", store["uri"], "--json", "--gradcam",
                       str(outdir), *map(str, films), str(dcm), str(bad)])
    assert rc == 1  # one file failed; the others are answered
    preds = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["error"] is None for p in preds] == [True, True, True, False]
    assert "broken.png" in preds[3]["file"] and preds[3]["error"]
    for p in preds[:3]:
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4) and p["predicted"] in CLASSES
        overlay = Image.open(p["gradcam"])
        assert overlay.size == (224, 224) and overlay.mode == "RGB"
    assert "dicom" in preds[2]["conversion"]


def test_predict_unknown_model_is_a_clear_error(store, capsys):
    rc = predict.main(["--model", f"models:/{NAME}@nope", "--tracking-uri", store["uri"], "x.png"])
    assert rc == 2 and "models:/cxr-test@nope" in capsys.readouterr().err
