"""The model registry: log the search's best model to MLflow, register it, and load registered models back.

The model is logged with `mlflow.pytorch.log_model(serialization_format="pickle")`: MLflow 3's default `pt2`
(torch.export) format reloads as a module that Grad-CAM cannot hook. Pickle runs code when loaded, so the same
model folder also carries the weights-only checkpoint (`extra_files/model.pt`: state dict + backbone, image
size, classes); `load_model` rebuilds the network from it with `torch.load(weights_only=True)` and only falls
back to the pickle for a model logged without it. Class names and preprocessing are in the MLmodel metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tune_ct.augment import MEAN, STD, to_model_input
from tune_ct.files import CLASSES

DEFAULT_REGISTER_NAME = "cxr-classifier"
WEIGHTS_FILE = "model.pt"  # the trial checkpoint format (tune_ct.trial.save_checkpoint)


class ModelLoadError(RuntimeError):
    """A model URI or checkpoint that cannot be loaded; the message says what to do."""


def resolve_tracking_uri(uri: str | None) -> str:
    from tune_ct.tracking import default_tracking_uri

    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def preprocessing(image_size: int) -> dict:
    """What a caller must do to a film before the network sees it (stored with every registered model)."""
    return {
        "decode": "8-bit grayscale (tune_ct.files.decode: PNG/JPEG, DICOM with modality + VOI LUT, MONOCHROME1 inverted)",
        "resize": f"{image_size}x{image_size}, bilinear with antialiasing (tune_ct.files.resize)",
        "scale": "pixel / 255", "mean": MEAN, "std": STD,
        "input": f"float32 tensor N x 1 x {image_size} x {image_size}, (pixel/255 - {MEAN}) / {STD}",
        "output": f"logits N x {len(CLASSES)} in class order {list(CLASSES)}; softmax gives probabilities",
    }


def model_metadata(saved: dict, extra: dict | None = None) -> dict:
    return {
        "classes": list(saved.get("classes", CLASSES)),
        "backbone": saved["backbone"],
        "image_size": int(saved["image_size"]),
        "preprocessing": preprocessing(int(saved["image_size"])),
        "hp": {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in saved.get("hp", {}).items()},
        "epoch": int(saved.get("epoch", 0)),
        **(extra or {}),
    }


def log_and_register(tracking_uri: str, run_id: str, model: torch.nn.Module, saved: dict, example: np.ndarray,
                     register_name: str | None, metadata: dict | None = None, version_tags: dict | None = None):
    """Log the model (pickle format + weights-only checkpoint) to run_id and register it. Returns
    (model_uri, version or None)."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    model = model.float().eval().to("cpu").to(memory_format=torch.contiguous_format)
    x = to_model_input(torch.from_numpy(np.array(example, dtype=np.uint8)))
    with torch.no_grad():
        logits = model(x).numpy()
    meta = model_metadata(saved, metadata)
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / WEIGHTS_FILE
        torch.save({"model": model.state_dict(), **{k: v for k, v in saved.items() if k != "model"}}, weights)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model, name="model", serialization_format="pickle",
                signature=infer_signature(x.numpy(), logits), input_example=x.numpy(),
                metadata=meta, extra_files=[str(weights)],
                extra_pip_requirements=["timm", "grad-cam"],
                registered_model_name=register_name or None,
            )
    version = getattr(info, "registered_model_version", None)
    if register_name and version is not None:
        client = MlflowClient(tracking_uri)
        for key, value in {"tune_ct.backbone": meta["backbone"], "tune_ct.image_size": meta["image_size"],
                           "tune_ct.classes": ",".join(meta["classes"]), "tune_ct.source_run_id": run_id,
                           **(version_tags or {})}.items():
            client.set_model_version_tag(register_name, str(version), key, str(value))
    return info.model_uri, version


def _local_model_dir(uri: str, tracking_uri: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
    except MlflowException as exc:
        raise ModelLoadError(f"cannot load model {uri!r} from {tracking_uri}: {exc.message}. Check the name, "
                             "version or alias (`champion` exists only after `python -m tune_ct.promote`) and "
                             "--tracking-uri") from exc


def load_model(ref: str, tracking_uri: str | None = None) -> tuple[torch.nn.Module, dict]:
    """A model in eval mode and its metadata (classes, backbone, image_size, preprocessing, ...), from a
    `models:/` / `runs:/` URI or a trial checkpoint folder or file."""
    from tune_ct.evaluate import load_checkpoint_model

    if "://" not in ref and ":/" not in ref:
        path = Path(ref).expanduser()
        if not path.exists():
            raise ModelLoadError(f"{ref}: no such checkpoint; pass a checkpoint folder (with {WEIGHTS_FILE}) or a "
                                 "model URI such as models:/cxr-classifier@champion")
        model, saved = load_checkpoint_model(path)
        return model, model_metadata(saved, {"uri": str(path.resolve())})
    tracking_uri = resolve_tracking_uri(tracking_uri)
    folder = _local_model_dir(ref, tracking_uri)
    from mlflow.models import Model

    try:
        meta = dict(Model.load(str(folder)).metadata or {})
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a folder that is not a model
        raise ModelLoadError(f"{ref} is not an MLflow model ({exc})") from exc
    weights = folder / "extra_files" / WEIGHTS_FILE
    if weights.is_file():
        model, saved = load_checkpoint_model(weights)  # weights-only: never runs code from the store
        meta = {**model_metadata(saved), **meta}
    else:
        import mlflow

        if "image_size" not in meta:
            raise ModelLoadError(f"{ref} carries neither {WEIGHTS_FILE} nor image_size metadata: not a tune_ct model")
        model = mlflow.pytorch.load_model(str(folder), map_location="cpu")  # pickle: trusted stores only
        model.eval()
    if list(meta.get("classes", CLASSES)) != list(CLASSES):
        raise ModelLoadError(f"{ref} predicts classes {meta.get('classes')}, expected {list(CLASSES)}")
    meta["uri"] = ref
    return model, meta


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


# ---- publishing the best model of a search (called from tune_ct.search.finish) ---------------------------------

def publish_best(client, parent_id: str, tracking_uri: str, model: torch.nn.Module, saved: dict, evaluation,
                 test_subset: Path, cache_root: Path, prep, register_name: str | None = DEFAULT_REGISTER_NAME,
                 gallery_per_class: int = 4, seed: int = 0) -> dict:
    """After the test evaluation: log the full evaluation, the Grad-CAM gallery and lung-focus scores, and the
    data overview to the parent run; log and register the model. Returns what it logged (for the summary)."""
    from mlflow.entities import Metric

    from tune_ct import gradcam
    from tune_ct.cache import open_or_build
    from tune_ct.evaluate import format_report, full_report, log_report
    from tune_ct.tracking import log_json

    size = int(saved["image_size"])
    origins = {e.file: e.origin for e in prep.manifest.entries if e.origin != "unknown"}
    if origins and evaluation.origins is None:
        evaluation.origins = [origins.get(f, "unknown") for f in evaluation.files]
    report = full_report(evaluation, seed=seed)
    report.update({"manifest_hash": prep.manifest.hash, "data": str(prep.root)})
    print("\n" + format_report(report, f"best model ({saved['backbone']}, {size}px)"))
    log_report(client, parent_id, report, "best model")

    # Grad-CAM on the test images, for the predicted class.
    data = open_or_build(test_subset, size, cache_root)
    idx = np.array([data.files.index(f) for f in evaluation.files])
    pixels = np.asarray(data.pixels[idx])
    y_pred = evaluation.probs.argmax(1)
    started = time.monotonic()
    # CAMs only where they are used: films with a lung mask (the score) and the gallery's picks.
    rows = gradcam.pick_gallery(evaluation.y_true, y_pred, gallery_per_class, seed)
    masked = [i for i, f in enumerate(evaluation.files) if gradcam.mask_path(prep.root, f).is_file()]
    need = sorted(set(rows) | set(masked))
    cams = np.zeros(pixels.shape, dtype=np.float32)
    cams[need] = gradcam.cam_maps(model, pixels[need], [int(y_pred[i]) for i in need])
    files_m = [evaluation.files[i] for i in masked]
    focus = gradcam.lung_focus_scores(prep.root, files_m, evaluation.y_true[masked], cams[masked], evaluation.split)
    focus["uniform_cam_baseline"] = gradcam.mask_area_share(prep.root, files_m, size)
    focus["seconds"] = round(time.monotonic() - started, 1)
    with tempfile.TemporaryDirectory() as tmp:
        gradcam.plot_gallery(pixels, cams, evaluation.y_true, y_pred, evaluation.probs, rows,
                             Path(tmp) / "gradcam_gallery.png",
                             f"Grad-CAM, {evaluation.split} split, predicted class ({saved['backbone']})")
        client.log_artifacts(parent_id, tmp, "gradcam")
    log_json(client, parent_id, focus, "lung_focus.json")
    now = int(time.time() * 1000)
    focus_metrics = {f"{evaluation.split}_lung_focus_{c.lower().replace(' ', '_')}": v["mean"]
                     for c, v in focus["per_class"].items() if v["mean"] is not None}
    if focus["all_with_masks"]["mean"] is not None:
        focus_metrics[f"{evaluation.split}_lung_focus_mean"] = focus["all_with_masks"]["mean"]
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in focus_metrics.items()])
    print(f"\nlung focus ({evaluation.split} split, share of Grad-CAM mass inside the lung mask; an even spread "
          f"would score {focus['uniform_cam_baseline'] or float('nan'):.2f}):")
    for cls, v in focus["per_class"].items():
        print(f"  {cls:<16} " + (f"{v['mean']:.3f} (n={v['n']})" if v["mean"] is not None else "n/a (no masks)"))

    log_data_overview(client, parent_id, prep, data, evaluation)

    example = pixels[:1]
    tags = {"tune_ct.manifest_hash": prep.manifest.hash, "tune_ct.data": str(prep.root),
            **{f"tune_ct.{k}": f"{report[k]:.4f}" for k in ("accuracy", "balanced_accuracy", "macro_f1")},
            "tune_ct.test_n": str(report["n"])}
    uri, version = log_and_register(tracking_uri, parent_id, model, saved, example, register_name,
                                    {"data": str(prep.root), "manifest_hash": prep.manifest.hash,
                                     "test_metrics": {k: report[k] for k in ("split", "n", *("accuracy",
                                                      "balanced_accuracy", "macro_f1"))}}, tags)
    if version is not None:
        print(f"registered {register_name} version {version} ({uri}); promote it with "
              f"`python -m tune_ct.promote --model {register_name} --version {version}`")
    client.set_tag(parent_id, "tune_ct.model_uri", uri)
    return {"model_uri": uri, "registered_model": register_name, "registered_version": version,
            "lung_focus": focus, "test_ece": report["ece"], "test_ci95": report["ci95"]}


def log_data_overview(client, run_id: str, prep, test_data, evaluation, per_class: int = 3) -> None:
    """Class counts per split (JSON) and a few test films per class (PNG), for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts: dict[str, dict[str, int]] = {}
    for e in prep.manifest.entries:
        counts.setdefault(e.split, {c: 0 for c in CLASSES})[e.label] += 1
    used: dict[str, dict[str, int]] = {}
    for e in prep.trainval_entries:
        used.setdefault(e.split, {c: 0 for c in CLASSES})[e.label] += 1
    used["test"] = {c: int((evaluation.y_true == k).sum()) for k, c in enumerate(CLASSES)}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "class_counts.json").write_text(json.dumps({"manifest": counts, "used_by_search": used}, indent=1))
        fig, axes = plt.subplots(len(CLASSES), per_class, figsize=(2 * per_class, 2.1 * len(CLASSES)), dpi=100,
                                 squeeze=False)
        for k, cls in enumerate(CLASSES):
            rows = [i for i, f in enumerate(evaluation.files) if evaluation.y_true[i] == k][:per_class]
            for j, ax in enumerate(axes[k]):
                ax.axis("off")
                if j < len(rows):
                    ax.imshow(test_data.pixels[test_data.files.index(evaluation.files[rows[j]])], cmap="gray")
                    ax.set_title(f"{cls}", fontsize=7)
        fig.suptitle("test split samples (as the model sees them)", fontsize=9)
        fig.tight_layout()
        fig.savefig(Path(tmp) / "sample_images.png")
        plt.close(fig)
        client.log_artifacts(run_id, tmp, "data")
