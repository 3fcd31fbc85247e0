"""Classify chest films (PNG, JPEG, DICOM) with a registered model.

    python -m tune_ct.predict --model models:/cxr-classifier@champion FILE... [--json] [--gradcam OUTDIR]
                              [--runtime torch|onnx] [--threads N]

Prints class probabilities per file. A file that cannot be read gets its own error and the others are still
answered; the exit status is then 1. `--runtime onnx` runs the version's ONNX export under ONNX Runtime (every
version registered since the export carries one unless its check failed: its tune_ct.onnx tag says why).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tune_ct.commands.common import add_tracking_arg, exit_on
from tune_ct.data.files import CLASSES
from tune_ct.registry.models import LoadedModel, ModelLoadError, load_model
from tune_ct.registry.onnx_export import onnx_network, onnx_session
from tune_ct.registry.classify import Network, Prediction, predict_files, torch_network
from tune_ct.track.uri import resolve_tracking_uri

RUNTIMES = ("torch", "onnx")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tune_ct.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a checkpoint")
    p.add_argument("files", nargs="+", type=Path, help="PNG, JPEG or DICOM files")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    p.add_argument("--gradcam", type=Path, metavar="OUTDIR", help="write Grad-CAM overlays here (PyTorch, whatever "
                   "--runtime computes the probabilities)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="what computes the probabilities: eager PyTorch (default) or the ONNX export (ONNX Runtime)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="intra-op threads of the runtime (default 0: the runtime's own default)")
    add_tracking_arg(p)
    args = p.parse_args(argv)
    if args.threads < 0:
        p.error(f"--threads must be 0 (the runtime's default) or more, got {args.threads}")
    return args


def network_for(args, model, loaded: LoadedModel) -> Network:
    """The --runtime's network; --threads applies to either runtime."""
    if args.runtime == "torch":
        if args.threads:
            torch.set_num_threads(args.threads)
        return torch_network(model)
    if not loaded.onnx_file:
        why = loaded.metadata.get("onnx") or "registered before the ONNX export, or not a registered version"
        raise ModelLoadError(f"{args.model} carries no ONNX export ({why}); use --runtime torch")
    try:
        return onnx_network(onnx_session(loaded.onnx_file, args.threads))
    except ImportError as exc:
        raise ModelLoadError(f"--runtime onnx needs onnxruntime ({exc}): pip install onnxruntime") from exc


def print_predictions(model: str, preds: list[Prediction], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"model": model, "classes": list(CLASSES), "predictions": [p.__dict__ for p in preds]},
                         indent=1))
        return
    for pr in preds:
        if pr.error:
            print(f"{pr.file}: ERROR {pr.error}")
        else:
            probs = "  ".join(f"{c} {v:.3f}" for c, v in pr.probabilities.items())
            extra = f"  [overlay {pr.gradcam}]" if pr.gradcam else ""
            print(f"{pr.file}: {pr.predicted} ({pr.probabilities[pr.predicted]:.3f})  |  {probs}{extra}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)

    def predict() -> int:
        model, loaded = load_model(args.model, tracking_uri)
        preds = predict_files(model, loaded.checkpoint.image_size, args.files, args.gradcam,
                              preprocessing=loaded.checkpoint.film, network=network_for(args, model, loaded))
        print_predictions(args.model, preds, args.json)
        return 1 if any(pr.error for pr in preds) else 0

    return exit_on((ModelLoadError,), predict)


if __name__ == "__main__":
    sys.exit(main())
