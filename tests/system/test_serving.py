"""System test: the champion served by MLflow's own `mlflow models serve` (--env-manager local) on 127.0.0.1,
answering real films (PNG, DICOM) and a corrupt one, against a real SQLite store. The served version crops to
the lungs with its own segmenter and equalises with CLAHE, so every artifact of the pyfunc is exercised; the
served probabilities must equal `predict_files` on the same films."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from tune_ct.data.files import CLASSES, decode_file, resize
from tune_ct.model import lungs
from tune_ct.model.networks import build_model
from tune_ct.registry.models import load_model, log_and_register
from tune_ct.registry.classify import predict_files
from tune_ct.track.runs import ensure_experiment

from helpers.servers import free_port, stop_process, wait_until_answering
from helpers.films import checkpoint_meta, twelve_bit_dicom as write_dicom
from tune_ct.model.preprocess import Preprocessing

NAME = "cxr-served"
SIZE = 64


def register_champion(root, data_dir) -> str:
    """A lung-crop + CLAHE baseline CNN (untrained, as is its segmenter) registered and made champion."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = ensure_experiment(client, "serving-test", root / "artifacts")
    torch.manual_seed(0)
    segmenter = root / "lungs.pt"
    lungs.save_segmenter(segmenter, lungs.LungNet(64), {})
    film = Preprocessing("clahe", True, str(segmenter))
    saved = checkpoint_meta("baseline_cnn", SIZE, film, {"equalize": "clahe", "lung_crop": True})
    example = np.stack([resize(decode_file(sorted((data_dir / c / "images").iterdir())[0])[0], SIZE) for c in CLASSES])
    run = client.create_run(exp)
    _, version = log_and_register(uri, run.info.run_id, build_model("baseline_cnn", SIZE), saved, example, NAME)
    client.set_registered_model_alias(NAME, "champion", str(version))
    assert client.get_model_version(NAME, str(version)).tags["tune_ct.onnx"].startswith("ok (max diff")
    return uri


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("serving")
    uri = register_champion(root, data_dir)
    port, log = free_port(), root / "serve.log"
    # Only the store the test made: no MLFLOW_* left over from another test's connect(). TUNE_CT_RUNTIME=onnx:
    # the server refuses to start without ONNX Runtime and the export, so the films below are answered by it.
    # The server execs `uvicorn` by name: the interpreter's bin folder goes first on PATH, as in an activated
    # virtualenv.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": uri,
           "TUNE_CT_RUNTIME": "onnx", "TUNE_CT_THREADS": "1",
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        wait_until_answering(proc, f"http://127.0.0.1:{port}/ping", log, timeout=180)
        yield {"url": f"http://127.0.0.1:{port}", "uri": uri, "proc": proc, "log": log}
    finally:
        stop_process(proc)


def invoke(url: str, rows: list[dict]) -> list[dict]:
    body = json.dumps({"dataframe_records": rows}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        assert r.status == 200
        return json.loads(r.read())["predictions"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.mark.timeout(600)
def test_served_champion_answers_films_like_predict(served, data_dir, tmp_path):
    films = [sorted((data_dir / c / "images").iterdir())[150] for c in CLASSES]
    dcm = tmp_path / "film.dcm"
    write_dicom(dcm, np.asarray(Image.open(films[0])))
    corrupt = films[2].read_bytes()[:400]  # a cut-off PNG
    rows = [{"image": b64(f.read_bytes()), "name": f.name} for f in films]
    rows += [{"image": b64(dcm.read_bytes()), "name": dcm.name}, {"image": b64(corrupt), "name": "cut.png"}]
    answer = invoke(served["url"], rows)

    assert len(answer) == len(rows)
    for row in answer[:-1]:
        assert row["error"] is None and row["predicted"] in CLASSES
        probs = [row[c] for c in CLASSES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5) and row["predicted"] == CLASSES[int(np.argmax(probs))]
    bad = answer[-1]
    assert bad["error"] and "truncated or corrupt" in bad["error"]
    assert bad["predicted"] is None and all(bad[c] is None for c in CLASSES)

    # Still up after the corrupt film, and it answers the next request alone.
    again = invoke(served["url"], rows[:1])
    assert [again[0][c] for c in CLASSES] == [answer[0][c] for c in CLASSES]
    assert served["proc"].poll() is None

    # The same films through `predict` (eager PyTorch, the weights-only load) give the same probabilities.
    model, loaded = load_model(f"models:/{NAME}@champion", served["uri"])
    film = loaded.checkpoint.film
    assert film.lung_crop and os.path.isfile(film.segmenter)
    local = predict_files(model, loaded.checkpoint.image_size, [*films, dcm], preprocessing=film)
    for row, pred in zip(answer, local, strict=False):
        assert row["predicted"] == pred.predicted
        assert max(abs(row[c] - pred.probabilities[c]) for c in CLASSES) <= 1e-5


@pytest.mark.timeout(300)
def test_served_model_rejects_a_request_it_cannot_read_per_row(served):
    # Not base64 at all: that row gets the error, the server stays up and still answers.
    answer = invoke(served["url"], [{"image": "not base64 !!"}])
    assert answer[0]["error"].startswith("image is not valid base64") and answer[0]["predicted"] is None
    with urllib.request.urlopen(f"{served['url']}/ping", timeout=5) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as err:  # no `image` column: MLflow's schema refuses the request
        invoke(served["url"], [{"picture": "x"}])
    assert err.value.code == 400
    assert served["proc"].poll() is None
