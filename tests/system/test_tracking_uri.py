"""One tracking URI for runs and registered models, in every command, from any folder (fresh processes: the
registry lookup of `models:/` URIs once went to ./mlflow.db whatever --tracking-uri said)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers.films import checkpoint_meta, make_small_dataset
from tune_ct.data.files import CLASSES, decode_file, resize
from tune_ct.model.networks import build_model
from tune_ct.registry.models import log_and_register
from tune_ct.track.runs import ensure_experiment

NAME = "uri-test"
SIZE = 32


@pytest.fixture(scope="module")
def other_store(tmp_path_factory, data_dir):
    """A store that is not ./mlflow.db of any folder the commands run in, holding one registered version."""
    root = tmp_path_factory.mktemp("other")
    dataset = make_small_dataset(data_dir, root / "COVID-19_Radiography_Dataset", per_class=8)
    uri = f"sqlite:///{root / 'other.db'}"
    client = MlflowClient(uri)
    exp = ensure_experiment(client, "uri-test", root / "artifacts")
    example = resize(decode_file(next((dataset / "COVID" / "images").iterdir()))[0], SIZE)[None]
    torch.manual_seed(0)
    saved = checkpoint_meta("baseline_cnn", SIZE)
    log_and_register(uri, client.create_run(exp).info.run_id, build_model("baseline_cnn", SIZE), saved, example,
                     NAME, {"data": str(dataset)}, {"tune_ct.data": str(dataset)})
    return {"uri": uri, "data": dataset, "root": root}


def command(folder: Path, *args: str, env_uri: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    if env_uri:
        env["MLFLOW_TRACKING_URI"] = env_uri
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)


def film(store) -> str:
    return str(next((store["data"] / "Normal" / "images").iterdir()))


@pytest.mark.parametrize("how", ["flag", "env"])
def test_predict_finds_the_registered_model_in_the_store_given(other_store, tmp_path, how):
    flag = ["--tracking-uri", other_store["uri"]] if how == "flag" else []
    proc = command(tmp_path / "elsewhere", "tune_ct.predict", "--model", f"models:/{NAME}/1", *flag, "--json",
                   film(other_store), env_uri=other_store["uri"] if how == "env" else None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["predictions"][0]["predicted"] in CLASSES
    assert not (tmp_path / "elsewhere" / "mlflow.db").exists()  # nothing looked up or created here


def test_evaluate_and_promote_find_the_registered_model_in_the_store_given(other_store, tmp_path):
    folder, wd = tmp_path / "elsewhere", str(tmp_path / "wd")
    proc = command(folder, "tune_ct.evaluate", "--model", f"models:/{NAME}/1", "--tracking-uri", other_store["uri"],
                   "--workdir", wd, "--json", str(tmp_path / "eval.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "eval.json").read_text())["split"] == "test"
    gates = tmp_path / "gates.yaml"
    gates.write_text(json.dumps({"min_macro_f1": 0.0, "min_covid_recall": 0.0}))
    proc = command(folder, "tune_ct.promote", "--model", NAME, "--version", "1", "--gates", str(gates), "--dry-run",
                   "--tracking-uri", other_store["uri"], "--workdir", wd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "would become @champion" in proc.stdout
    assert not (folder / "mlflow.db").exists()
