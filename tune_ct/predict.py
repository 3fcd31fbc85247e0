"""Classify chest films (PNG, JPEG, DICOM) with a registered model.

    python -m tune_ct.predict --model models:/cxr-classifier@champion FILE... [--json] [--gradcam OUTDIR]

Prints class probabilities per file. A file that cannot be read gets its own error and the others are still
answered; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tune_ct.augment import to_model_input
from tune_ct.files import CLASSES, RejectedImage, decode, resize


@dataclass
class Prediction:
    file: str
    probabilities: dict[str, float] = field(default_factory=dict)
    predicted: str | None = None
    conversion: str | None = None
    gradcam: str | None = None
    error: str | None = None


def read_films(paths: list[Path]) -> tuple[list[Prediction], list[np.ndarray | None]]:
    out, images = [], []
    for path in paths:
        try:
            pixels, conversion = decode(Path(path).read_bytes(), Path(path).name)
            out.append(Prediction(str(path), conversion=conversion))
            images.append(pixels)
        except (OSError, RejectedImage) as exc:
            out.append(Prediction(str(path), error=f"{type(exc).__name__}: {exc}"))
            images.append(None)
    return out, images


def predict_files(model: torch.nn.Module, image_size: int, paths: list[Path], gradcam_dir: Path | None = None,
                  batch_size: int = 32) -> list[Prediction]:
    preds, images = read_films(paths)
    ok = [i for i, img in enumerate(images) if img is not None]
    if not ok:
        return preds
    batch = np.stack([resize(images[i], image_size) for i in ok])
    model.eval()
    probs = np.zeros((len(ok), len(CLASSES)), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(ok), batch_size):
            x = to_model_input(torch.from_numpy(batch[start : start + batch_size]))
            probs[start : start + len(x)] = torch.softmax(model(x).float(), 1).numpy()
    for row, i in enumerate(ok):
        preds[i].probabilities = {c: round(float(p), 6) for c, p in zip(CLASSES, probs[row])}
        preds[i].predicted = CLASSES[int(probs[row].argmax())]
    if gradcam_dir is not None:
        write_overlays(model, batch, probs.argmax(1), [preds[i] for i in ok], [images[i] for i in ok], gradcam_dir)
    return preds


def write_overlays(model, batch: np.ndarray, classes: np.ndarray, preds: list[Prediction], originals, out: Path):
    """Grad-CAM of the predicted class, scaled up and laid over the film at its own resolution."""
    import cv2
    from PIL import Image

    from tune_ct.gradcam import cam_maps, overlay

    out.mkdir(parents=True, exist_ok=True)
    cams = cam_maps(model, batch, [int(c) for c in classes])
    used: set[str] = set()
    for pred, original, cam in zip(preds, originals, cams):
        name = Path(pred.file).stem
        while name in used:  # two inputs with one stem (a/x.png, b/x.png) get distinct overlays
            name += "_"
        used.add(name)
        big = cv2.resize(cam, (original.shape[1], original.shape[0]), interpolation=cv2.INTER_LINEAR)
        path = out / f"{name}.gradcam.png"
        Image.fromarray(overlay(original, np.clip(big, 0, 1))).save(path)
        pred.gradcam = str(path)


def main(argv: list[str] | None = None) -> int:
    from tune_ct.registry import ModelLoadError, load_model

    p = argparse.ArgumentParser(prog="python -m tune_ct.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a checkpoint")
    p.add_argument("files", nargs="+", type=Path, help="PNG, JPEG or DICOM files")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    p.add_argument("--gradcam", type=Path, metavar="OUTDIR", help="write Grad-CAM overlays here")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    args = p.parse_args(argv)
    try:
        model, meta = load_model(args.model, args.tracking_uri)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    preds = predict_files(model, int(meta["image_size"]), args.files, args.gradcam)
    if args.json:
        print(json.dumps({"model": args.model, "classes": list(CLASSES), "predictions": [p.__dict__ for p in preds]},
                         indent=1))
    else:
        for pr in preds:
            if pr.error:
                print(f"{pr.file}: ERROR {pr.error}")
            else:
                probs = "  ".join(f"{c} {v:.3f}" for c, v in pr.probabilities.items())
                extra = f"  [overlay {pr.gradcam}]" if pr.gradcam else ""
                print(f"{pr.file}: {pr.predicted} ({pr.probabilities[pr.predicted]:.3f})  |  {probs}{extra}")
    return 1 if any(pr.error for pr in preds) else 0


if __name__ == "__main__":
    sys.exit(main())
