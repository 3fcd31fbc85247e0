"""Publish the best model of a search: its full test evaluation, Grad-CAM and lung focus, the data overview,
and a new registered version, all on the search's parent run. Nothing here prints: the search's console reads
what `publish_best` returns."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tune_ct.data.cache import open_or_build
from tune_ct.data.files import CLASSES
from tune_ct.evaluate import gradcam
from tune_ct.evaluate.evaluation import Evaluation, TestSet
from tune_ct.evaluate.full_report import full_report, log_report
from tune_ct.model.checkpoint import CheckpointMeta
from tune_ct.model.preprocess import per_film
from tune_ct.registry.models import log_and_register
from tune_ct.track import tags
from tune_ct.track.figures import pyplot, save_figure
from tune_ct.track.runs import log_json


@dataclass
class BestModel:
    """The search's winner, rebuilt from its checkpoint, and its evaluation on the locked test split."""

    model: torch.nn.Module
    meta: CheckpointMeta
    evaluation: Evaluation
    test: TestSet


@dataclass(frozen=True)
class Published:
    """What publishing the winner produced: its full test report, lung focus and registered version."""

    report: dict  # the full locked-test report (tune_ct.evaluate.full_report)
    lung_focus: dict
    model_uri: str
    registered_model: str | None
    registered_version: str | None


def publish_best(client, parent_id: str, best: BestModel, prep,
                 register_name: str | None = tags.DEFAULT_REGISTER_NAME, gallery_per_class: int = 4,
                 seed: int = 0) -> Published:
    """Log the full evaluation, Grad-CAM, lung focus and data overview; log and register the model."""
    evaluation = best.evaluation
    report = full_report(evaluation, seed=seed)
    report.update({"manifest_hash": prep.manifest.hash, "data": str(prep.root)})
    log_report(client, parent_id, report, "best model")
    # The same cache the evaluation read: the films as the model saw them (cropped, equalised).
    data = open_or_build(best.test.subset, best.meta.image_size, best.test.cache_root, per_film=per_film(best.meta.film))
    pixels = np.asarray(data.pixels[np.array([data.files.index(f) for f in evaluation.files])])
    focus = log_gradcam(client, parent_id, best, prep.root, pixels, gallery_per_class, seed)
    log_data_overview(client, parent_id, prep, pixels, evaluation)
    # The ONNX export is checked on 16 test films spread over the split (it is sorted by class), not on one.
    spread = np.unique(np.linspace(0, len(pixels) - 1, min(16, len(pixels))).astype(int))
    uri, version = register(client, parent_id, best, prep, report, pixels[spread], register_name)
    return Published(report, focus, uri, register_name or None, version)


def log_gradcam(client, parent_id: str, best: BestModel, data_root: Path, pixels: np.ndarray, per_class: int,
                seed: int) -> dict:
    """Grad-CAM of the predicted class where it is used: the gallery's films and those with a lung mask."""
    ev = best.evaluation
    y_pred = ev.probs.argmax(1)
    started = time.monotonic()
    rows = gradcam.pick_gallery(ev.y_true, y_pred, per_class, seed)
    masked = [i for i, f in enumerate(ev.files) if gradcam.mask_path(data_root, f).is_file()]
    need = sorted(set(rows) | set(masked))
    cams = np.zeros(pixels.shape, dtype=np.float32)
    cams[need] = gradcam.cam_maps(best.model, pixels[need], [int(y_pred[i]) for i in need])
    files_m = [ev.files[i] for i in masked]
    boxes = lung_boxes(best, data_root, files_m)
    focus = gradcam.lung_focus_scores(data_root, files_m, ev.y_true[masked], cams[masked], ev.split, boxes)
    focus["uniform_cam_baseline"] = gradcam.mask_area_share(data_root, files_m, best.meta.image_size, boxes)
    focus["seconds"] = round(time.monotonic() - started, 1)
    with tempfile.TemporaryDirectory() as tmp:
        gradcam.plot_gallery(pixels, cams, ev.y_true, y_pred, ev.probs, rows, Path(tmp) / "gradcam_gallery.png",
                             f"Grad-CAM, {ev.split} split, predicted class ({best.meta.backbone})")
        client.log_artifacts(parent_id, tmp, "gradcam")
    log_json(client, parent_id, focus, "lung_focus.json")
    log_focus_metrics(client, parent_id, focus, ev.split)
    return focus


def lung_boxes(best: BestModel, data_root: Path, files: list[str]) -> dict | None:
    """For a lung_crop model, the crop of each film (its CAM covers the crop, so its mask must be cut the same)."""
    film = best.meta.film
    if not film.lung_crop or not files:
        return None
    from tune_ct.data.files import decode_file
    from tune_ct.model.lungs import crop_to_lungs_batch, load_segmenter

    segmenter, _ = load_segmenter(Path(film.segmenter))
    crops = crop_to_lungs_batch([decode_file(data_root / f)[0] for f in files], segmenter)
    return {f: box for f, (_, box) in zip(files, crops)}


def log_focus_metrics(client, parent_id: str, focus: dict, split: str) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = {f"{split}_lung_focus_{c.lower().replace(' ', '_')}": v["mean"]
               for c, v in focus["per_class"].items() if v["mean"] is not None}
    if focus["all_with_masks"]["mean"] is not None:
        metrics[f"{split}_lung_focus_mean"] = focus["all_with_masks"]["mean"]
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def register(client, parent_id: str, best: BestModel, prep, report: dict, example: np.ndarray,
             register_name: str | None) -> tuple[str, str | None]:
    """Log the model on the parent run and, with a name, register it as a new version tagged with its figures."""
    from tune_ct.data.collections import data_spec

    version_tags = {tags.MANIFEST_HASH: prep.manifest.hash, tags.DATA: str(prep.root), tags.TEST_N: str(report["n"]),
                    **{tags.test_figure(k): f"{report[k]:.4f}" for k in tags.TEST_FIGURES}}
    spec = data_spec(prep.more, prep.held_out)
    if spec:
        version_tags[tags.DATA_SPEC] = spec
    headline = {k: report[k] for k in ("split", "n", "accuracy", "balanced_accuracy", "macro_f1")}
    uri, version = log_and_register(client.tracking_uri, parent_id, best.model, best.meta, example, register_name,
                                    {"data": str(prep.root), "data_spec": spec, "manifest_hash": prep.manifest.hash,
                                     "test_metrics": headline}, version_tags)
    client.set_tag(parent_id, tags.MODEL_URI, uri)
    return uri, version


def log_data_overview(client, run_id: str, prep, pixels: np.ndarray, evaluation: Evaluation,
                      per_class: int = 3) -> None:
    """Class counts per split (JSON) and a few test films per class (PNG), for the report."""
    counts: dict[str, dict[str, int]] = {}
    for e in prep.manifest.entries:
        counts.setdefault(e.split, {c: 0 for c in CLASSES})[e.label] += 1
    used: dict[str, dict[str, int]] = {}
    for e in prep.trainval_entries:
        used.setdefault(e.split, {c: 0 for c in CLASSES})[e.label] += 1
    used["test"] = {c: int((evaluation.y_true == k).sum()) for k, c in enumerate(CLASSES)}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "class_counts.json").write_text(json.dumps({"manifest": counts, "used_by_search": used}, indent=1))
        fig, axes = pyplot().subplots(len(CLASSES), per_class, figsize=(2 * per_class, 2.1 * len(CLASSES)),
                                      dpi=100, squeeze=False)
        for k, cls in enumerate(CLASSES):
            rows = [i for i in range(len(evaluation.files)) if evaluation.y_true[i] == k][:per_class]
            for j, ax in enumerate(axes[k]):
                ax.axis("off")
                if j < len(rows):
                    ax.imshow(pixels[rows[j]], cmap="gray")
                    ax.set_title(f"{cls}", fontsize=7)
        fig.suptitle("test split samples (as the model sees them)", fontsize=9)
        save_figure(fig, Path(tmp) / "sample_images.png")
        client.log_artifacts(run_id, tmp, "data")
