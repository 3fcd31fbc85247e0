"""The model registry: log the search's best model to MLflow, register it, and load registered models back.

A registered version is one model folder with two flavors (tune_ct.registry.serving): the pyfunc that
`mlflow models serve` runs on films, whose artifacts are the weights-only checkpoint (`artifacts/model.pt`:
state dict + backbone, image size, classes), the lung segmenter of a lung-crop model (`artifacts/lungs.pt`) and
the ONNX export when it passed its check (`artifacts/model.onnx`, tag `tune_ct.onnx`); and MLflow's pytorch
flavor in pickle format (MLflow 3's default `pt2` reloads as a module that Grad-CAM cannot hook). Pickle runs
code when loaded, so `load_model` rebuilds the network from model.pt with `torch.load(weights_only=True)` -- in
artifacts/, or in extra_files/ for versions registered before the pyfunc -- and only falls back to the pickle for
a model logged without either. Class names and preprocessing are in the MLmodel metadata.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tune_ct.data.files import CLASSES
from tune_ct.model.augment import MEAN, STD, to_model_input
from tune_ct.model.checkpoint import CHECKPOINT_FILE, CheckpointMeta, load_checkpoint_model, save_weights
from tune_ct.registry.onnx_export import ONNX_FILE
from tune_ct.track import tags

WEIGHTS_FILE = CHECKPOINT_FILE  # the checkpoint's model.pt, carried in the model folder (see WEIGHTS_DIRS)
SEGMENTER_FILE = "lungs.pt"  # a lung_crop model carries its segmenter: it must work on films without masks
ARTIFACTS_DIR = "artifacts"  # the pyfunc's artifacts (model.pt, lungs.pt, model.onnx): versions from now on
WEIGHTS_DIRS = (ARTIFACTS_DIR, "extra_files")  # where model.pt is: this layout, then the pytorch-only one of before


class ModelLoadError(RuntimeError):
    """A model URI or checkpoint that cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class LoadedModel:
    """What a loaded model says of itself: its checkpoint metadata (network, image size, film preprocessing), the
    registered model's MLmodel metadata ({} for a checkpoint folder) and its local ONNX export, if any."""

    uri: str
    checkpoint: CheckpointMeta
    metadata: dict
    onnx_file: str | None = None

    @property
    def data(self) -> str | None:
        """The dataset folder the model was trained on, as recorded at registration."""
        return self.metadata.get("data")

    @property
    def title(self) -> str:
        return f"{self.uri} ({self.checkpoint.title})"


def preprocessing(image_size: int) -> dict:
    """What a caller must do to a film before the network sees it (stored with every registered model)."""
    return {
        "decode": "8-bit grayscale (tune_ct.data.files.decode: PNG/JPEG, DICOM with modality + VOI LUT, "
                  "MONOCHROME1 inverted)",
        "resize": f"{image_size}x{image_size}, bilinear with antialiasing (tune_ct.data.files.resize)",
        "scale": "pixel / 255", "mean": MEAN, "std": STD,
        "input": f"float32 tensor N x 1 x {image_size} x {image_size}, (pixel/255 - {MEAN}) / {STD}",
        "output": f"logits N x {len(CLASSES)} in class order {list(CLASSES)}; softmax gives probabilities",
    }


def model_metadata(meta: CheckpointMeta, extra: dict | None = None) -> dict:
    """The MLmodel metadata of a registered version: what it is and what a caller must do to a film."""
    return {
        "classes": list(meta.classes),
        "backbone": meta.backbone,
        "image_size": meta.image_size,
        "preprocessing": preprocessing(meta.image_size),
        "film_preprocessing": meta.film.describe(),
        "hp": {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in meta.hp.items()},
        "epoch": meta.epoch,
        **(extra or {}),
    }


def pip_requirements() -> list[str]:
    """What loading the model needs, pinned to what trained it. Declared, not inferred: MLflow's inference loads
    the model in a subprocess (~12 s per registration here) and misses timm, which rebuilds the network."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("mlflow", "torch", "timm", "numpy", "grad-cam", "opencv-python-headless", "pillow", "pydicom",
                    "onnxruntime"):
        try:
            out.append(f"{package}=={version(package)}")
        except PackageNotFoundError:  # an install without the optional one: leave it to the serving side
            continue
    return out


def carried(meta: CheckpointMeta) -> CheckpointMeta:
    """The metadata a registered model carries: its lung segmenter (if any) inside the model's own folder."""
    if not meta.film.lung_crop:
        return meta
    return meta.with_film(replace(meta.film, segmenter=f"{ARTIFACTS_DIR}/{SEGMENTER_FILE}"))


def stage_files(folder: Path, model: torch.nn.Module, meta: CheckpointMeta) -> dict:
    """model.pt (weights-only checkpoint) and, for a lung-crop model, lungs.pt in `folder`, by artifact name."""
    from tune_ct.registry import serving

    files = {serving.WEIGHTS: folder / WEIGHTS_FILE}
    save_weights(files[serving.WEIGHTS], model, carried(meta))
    if meta.film.lung_crop:
        files[serving.SEGMENTER] = folder / SEGMENTER_FILE
        shutil.copyfile(meta.film.segmenter, files[serving.SEGMENTER])
    return {name: str(path) for name, path in files.items()}


def log_and_register(tracking_uri: str, run_id: str, model: torch.nn.Module, meta: CheckpointMeta,
                     example: np.ndarray, register_name: str | None, metadata: dict | None = None,
                     version_tags: dict | None = None):
    """Log the model to run_id and register it. Returns (model_uri, version or None). `example`: real films
    (N x S x S uint8, as the network sees them): the ONNX export is checked on them."""
    import mlflow

    from tune_ct.registry import serving
    from tune_ct.registry.onnx_export import export_checked
    from tune_ct.track.uri import connect

    model = model.float().eval().to("cpu").to(memory_format=torch.contiguous_format)
    x = to_model_input(torch.from_numpy(np.array(example, dtype=np.uint8)))
    client = connect(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = stage_files(Path(tmp), model, meta)
        onnx = export_checked(model, x, Path(tmp))
        if onnx.path is not None:
            artifacts[serving.ONNX] = str(onnx.path)
        described = model_metadata(carried(meta), {**(metadata or {}), "onnx": onnx.tag})
        # extra_files: the segmenter again, beside the pickle, for mlflow.pytorch users (the crop needs it).
        extra = [artifacts[serving.SEGMENTER]] if meta.film.lung_crop else []
        with mlflow.start_run(run_id=run_id):
            info = serving.log_film_model(model, artifacts, extra, np.asarray(example, np.uint8), described,
                                          pip_requirements(), register_name)
    version = getattr(info, "registered_model_version", None)
    if register_name and version is not None:
        for key, value in {tags.BACKBONE: meta.backbone, tags.IMAGE_SIZE: meta.image_size,
                           tags.CLASSES: ",".join(meta.classes), tags.SOURCE_RUN_ID: run_id,
                           tags.ONNX: onnx.tag, **(version_tags or {})}.items():
            client.set_model_version_tag(register_name, str(version), key, str(value))
    return info.model_uri, version


def _local_model_dir(uri: str, tracking_uri: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    from tune_ct.track.uri import connect

    connect(tracking_uri)  # models:/ URIs resolve through the registry URI: the same store
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
    except MlflowException as exc:
        raise ModelLoadError(f"cannot load model {uri!r} from {tracking_uri}: {exc.message}. Check the name, "
                             "version or alias (`champion` exists only after `python -m tune_ct.promote`) and "
                             "--tracking-uri") from exc


def load_model(ref: str, tracking_uri: str) -> tuple[torch.nn.Module, LoadedModel]:
    """A model in eval mode and what it says of itself, from a `models:/` / `runs:/` URI or a trial checkpoint
    folder or file."""
    if "://" not in ref and ":/" not in ref:
        path = Path(ref).expanduser()
        if not path.exists():
            raise ModelLoadError(f"{ref}: no such checkpoint; pass a checkpoint folder (with {WEIGHTS_FILE}) or a "
                                 "model URI such as models:/cxr-classifier@champion")
        model, meta = load_checkpoint_model(path)
        return model, LoadedModel(str(path.resolve()), meta, {})
    folder = _local_model_dir(ref, tracking_uri)
    from mlflow.models import Model

    try:
        metadata = dict(Model.load(str(folder)).metadata or {})
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a folder that is not a model
        raise ModelLoadError(f"{ref} is not an MLflow model ({exc})") from exc
    if list(metadata.get("classes", CLASSES)) != list(CLASSES):
        raise ModelLoadError(f"{ref} predicts classes {metadata.get('classes')}, expected {list(CLASSES)}")
    model, meta = _network(ref, folder, metadata)
    onnx_file = folder / ARTIFACTS_DIR / ONNX_FILE
    return model, LoadedModel(ref, meta, metadata, str(onnx_file) if onnx_file.is_file() else None)


def _network(ref: str, folder: Path, metadata: dict) -> tuple[torch.nn.Module, CheckpointMeta]:
    """The network rebuilt weights-only from model.pt, or (a model logged without it) MLflow's pickle."""
    weights = next((folder / d / WEIGHTS_FILE for d in WEIGHTS_DIRS if (folder / d / WEIGHTS_FILE).is_file()), None)
    if weights is not None:
        return load_checkpoint_model(weights, folder)  # weights-only: never runs code from the store
    import mlflow

    if "image_size" not in metadata:
        raise ModelLoadError(f"{ref} carries neither {WEIGHTS_FILE} nor image_size metadata: not a tune_ct model")
    model = mlflow.pytorch.load_model(str(folder), map_location="cpu")  # pickle: trusted stores only
    model.eval()
    return model, CheckpointMeta.read({**metadata, "hp": metadata.get("hp") or {}}, folder)


def resolve_version(client, name: str, version: str | None = None, alias: str | None = None):
    """A ModelVersion by number, alias, or the latest one."""
    from mlflow.exceptions import MlflowException

    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version:
            return client.get_model_version(name, str(version))
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise ModelLoadError(f"registered model {name!r}: {exc.message}") from exc
    if not versions:
        raise ModelLoadError(f"registered model {name!r} has no versions: run a search (it registers the best "
                             "model) or check --tracking-uri")
    return max(versions, key=lambda v: int(v.version))
