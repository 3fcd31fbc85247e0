"""The registered model as an MLflow pyfunc that takes films, for `mlflow models serve`.

    mlflow models serve -m models:/cxr-classifier@champion --env-manager local
    POST /invocations {"dataframe_records": [{"image": "<base64 of PNG/JPEG/DICOM bytes>", "name": "a.dcm"}, ...]}

One row comes back per film: the four class probabilities (columns named by class), `predicted`, and `error`
(set, with the probabilities empty, for a film that cannot be decoded; the other films are still answered). The
path is predict's (tune_ct.registry.classify.classify): decode -> per-film preprocessing -> resize -> network.

The model folder holds two flavors. `python_function` is this module's FilmClassifier, logged as code
(models-from-code, tune_ct/registry/pyfunc_entry.py: nothing is unpickled to build it); its load_context rebuilds
the network weights-only from the `weights` artifact (model.pt), crops with the `lungs` artifact (lungs.pt) when
the model was trained on crops, and runs the `onnx` artifact under ONNX Runtime when there is one. `pytorch` is
MLflow's pickle of the module, for `mlflow.pytorch.load_model` users (Grad-CAM hooks work on it); with it,
extra_files/ carries the segmenter. The serving side needs tune_ct installed (`--env-manager local`).

Settings, read at load: TUNE_CT_RUNTIME (auto: ONNX Runtime when the export is there and onnxruntime imports,
else torch; torch; onnx) and TUNE_CT_THREADS (intra-op threads, 0: the runtime's default), or the same keys
`runtime` / `threads` in `mlflow.pyfunc.load_model(..., model_config=...)`.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from tune_ct.data.cache import PerFilm
from tune_ct.data.files import CLASSES
from tune_ct.model.checkpoint import load_checkpoint_model
from tune_ct.model.preprocess import per_film
from tune_ct.registry.onnx_export import onnx_network, onnx_session
from tune_ct.registry.classify import Network, Prediction, classify, decode_film, torch_network

log = logging.getLogger(__name__)

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
WEIGHTS, SEGMENTER, ONNX = "weights", "lungs", "onnx"  # the pyfunc's artifact names
RUNTIME_ENV, THREADS_ENV = "TUNE_CT_RUNTIME", "TUNE_CT_THREADS"
RUNTIMES = ("auto", "torch", "onnx")
OUTPUT_COLUMNS = [*CLASSES, "predicted", "error"]
# Logged with the model: MLflow lets load_model(model_config=...) override only keys the model was logged with.
MODEL_CONFIG = {"runtime": None, "threads": None}


class ServingError(RuntimeError):
    """The served model cannot start as configured; the message names the setting or artifact."""


@dataclass(frozen=True)
class ServingSettings:
    runtime: str = "auto"
    threads: int = 0  # intra-op threads; 0: the runtime's default

    @classmethod
    def parse(cls, model_config: dict | None, env: dict[str, str]) -> ServingSettings:
        """A model_config value (given at load) wins over the environment; None (as logged) defers to it."""
        config = model_config or {}
        runtime = config.get("runtime")
        runtime = str(env.get(RUNTIME_ENV, "auto") if runtime is None else runtime).strip().lower()
        if runtime not in RUNTIMES:
            raise ServingError(f"{RUNTIME_ENV} / model_config 'runtime' must be one of {', '.join(RUNTIMES)}, "
                               f"got {runtime!r}")
        raw = config.get("threads")
        raw = env.get(THREADS_ENV, "0") if raw is None else raw
        try:
            threads = int(str(raw).strip() or 0)
        except ValueError:
            threads = -1
        if threads < 0:
            raise ServingError(f"{THREADS_ENV} / model_config 'threads' must be a whole number >= 0 (0: the "
                               f"runtime's default), got {raw!r}")
        return cls(runtime, threads)


@dataclass
class Served:
    """What answers requests: the network's input side, its per-film preprocessing, the network, the runtime."""

    image_size: int
    films: PerFilm | None
    network: Network
    runtime: str


def pick_network(model: torch.nn.Module, onnx_path: str | None, settings: ServingSettings) -> tuple[Network, str]:
    """ONNX Runtime when asked for or (auto) when the export is there and onnxruntime imports, else torch."""
    exported = bool(onnx_path) and Path(onnx_path).is_file()
    if settings.runtime == "onnx" and not exported:
        raise ServingError(f"{RUNTIME_ENV}=onnx but this model version carries no ONNX export (its tune_ct.onnx "
                           f"tag says why): unset {RUNTIME_ENV} or set it to torch")
    if exported and settings.runtime != "torch":
        try:
            return onnx_network(onnx_session(onnx_path, settings.threads)), "onnxruntime"
        except ImportError as exc:
            if settings.runtime == "onnx":
                raise ServingError(f"{RUNTIME_ENV}=onnx but onnxruntime cannot be imported ({exc})") from exc
            log.warning("onnxruntime cannot be imported (%s): serving with torch", exc)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return torch_network(model), "torch"


def load_served(artifacts: dict[str, str], settings: ServingSettings) -> Served:
    """Rebuild the network weights-only from the artifacts; never unpickles a module."""
    model, meta = load_checkpoint_model(artifacts[WEIGHTS])
    film = meta.film
    if film.lung_crop:
        if not artifacts.get(SEGMENTER):
            raise ServingError(f"the model crops films to the lungs but carries no '{SEGMENTER}' artifact")
        film = replace(film, segmenter=artifacts[SEGMENTER])
    network, runtime = pick_network(model, artifacts.get(ONNX), settings)
    threads = settings.threads or "default"
    log.info("serving %s at %d px with %s (%s intra-op threads)", meta.backbone, meta.image_size, runtime, threads)
    return Served(meta.image_size, per_film(film), network, runtime)


def films_from_frame(frame: pd.DataFrame) -> tuple[list[Prediction], list[np.ndarray | None]]:
    """The request's rows (`image`: base64 film bytes, optional `name`) decoded one by one."""
    names = frame["name"] if "name" in frame.columns else [None] * len(frame)
    preds, images = [], []
    for i, (value, name) in enumerate(zip(frame["image"], names)):
        name = name if isinstance(name, str) and name else f"row {i}"
        try:
            data = value if isinstance(value, bytes) else base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError) as exc:
            preds.append(Prediction(name, error=f"image is not valid base64: {exc}"))
            images.append(None)
            continue
        pred, pixels = decode_film(name, data)
        preds.append(pred)
        images.append(pixels)
    return preds, images


def to_frame(preds: list[Prediction]) -> pd.DataFrame:
    """One row per film; object columns so that an error row's missing values are JSON null, not NaN."""
    rows = [[p.probabilities.get(c) for c in CLASSES] + [p.predicted, p.error] for p in preds]
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS, dtype=object)


class FilmClassifier(mlflow.pyfunc.PythonModel):
    """The served model; see the module docstring."""

    def load_context(self, context):
        self.served = load_served(dict(context.artifacts), ServingSettings.parse(context.model_config, os.environ))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        preds, images = films_from_frame(model_input)
        served = self.served
        classify(preds, images, served.image_size, served.network, served.films)
        return to_frame(preds)


def film_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", "image"), ColSpec("string", "name", required=False)])
    outputs = Schema([*(ColSpec("double", c, required=False) for c in CLASSES),
                      ColSpec("string", "predicted", required=False), ColSpec("string", "error", required=False)])
    return ModelSignature(inputs, outputs)


def input_example(film: np.ndarray) -> pd.DataFrame:
    """A request of one film (PNG, base64): MLflow stores it with the model and serves it once at logging."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(film, dtype=np.uint8)).save(buf, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode("ascii")], "name": ["example.png"]})


def save_model(path: str, mlflow_model, network: torch.nn.Module, artifacts: dict[str, str], extra_files: list[str],
               example: np.ndarray, pip_requirements: list[str], **kwargs) -> None:
    """The flavor behind log_film_model (mlflow.models.Model.log calls it): the pyfunc, then the pytorch flavor
    added to the same folder and MLmodel."""
    mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, python_model=str(ENTRY), artifacts=artifacts,
                             signature=film_signature(), input_example=input_example(np.asarray(example)[0]),
                             pip_requirements=pip_requirements, model_config=MODEL_CONFIG, **kwargs)
    add_pytorch_flavor(Path(path), mlflow_model, network, extra_files, pip_requirements)


def add_pytorch_flavor(path: Path, mlflow_model, network: torch.nn.Module, extra_files: list[str],
                       pip_requirements: list[str]) -> None:
    """Save with mlflow.pytorch into a scratch folder and move its flavor over: the files and configuration
    stay exactly what mlflow.pytorch writes and reads."""
    import mlflow.pytorch
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "pytorch"
        mlflow.pytorch.save_model(network, str(staged), serialization_format="pickle", extra_files=extra_files,
                                  pip_requirements=pip_requirements)
        conf = Model.load(str(staged)).flavors["pytorch"]
        for sub in ("data", "extra_files"):
            if (staged / sub).exists():
                shutil.copytree(staged / sub, path / sub)
    mlflow_model.add_flavor("pytorch", **conf)
    mlflow_model.model_size_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    mlflow_model.save(str(path / "MLmodel"))


def log_film_model(network: torch.nn.Module, artifacts: dict[str, str], extra_files: list[str], example: np.ndarray,
                   metadata: dict, pip_requirements: list[str], register_name: str | None):
    """Log the two-flavor model as `model` on the active run (and register it). Returns MLflow's ModelInfo."""
    import sys

    from mlflow.models import Model

    # This module is the flavor: Model.log calls its save_model with the folder to fill.
    return Model.log(None, name="model", flavor=sys.modules[__name__], flavor_name="tune_ct", metadata=metadata,
                     registered_model_name=register_name or None, network=network, artifacts=artifacts,
                     extra_files=extra_files, example=example, pip_requirements=pip_requirements)
