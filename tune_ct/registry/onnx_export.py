"""The ONNX fast path: the registered network exported to ONNX, kept only when ONNX Runtime reproduces PyTorch.

The classic (TorchScript) exporter is used (`dynamo=False`): torch's default dynamo exporter needs onnxscript,
which the product does not install, and the classic one covers our networks' ops. A trace can be silently wrong
(a data-dependent branch frozen, a batch size baked into a reshape), so the export is checked on the
registration's real films, all together, each alone and with one more film than the trace saw: ONNX Runtime's
probabilities must be within TOLERANCE of PyTorch's, otherwise the version is registered without the export and
its `tune_ct.onnx` tag says why.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tune_ct.registry.classify import Network, probabilities, torch_network
from tune_ct.track.messages import first_line

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPSET = 17  # the first with LayerNormalization as one op (timm's transformers); convnets need far less
TOLERANCE = 1e-4  # largest absolute difference of a class probability allowed between ONNX Runtime and PyTorch
INPUT, OUTPUT = "input", "logits"


@dataclass(frozen=True)
class OnnxCheck:
    """The outcome of exporting and checking one network: the file when kept, else why not."""

    path: Path | None
    max_diff: float | None = None
    reason: str | None = None

    @property
    def tag(self) -> str:
        """The `tune_ct.onnx` version tag."""
        return f"ok (max diff {self.max_diff:.1e})" if self.path else f"absent: {self.reason}"


def export_onnx(model: torch.nn.Module, sample: torch.Tensor, path: Path) -> None:
    """Write the network (normalised N x 1 x S x S input -> logits) with a dynamic batch axis."""
    with warnings.catch_warnings():
        # The classic exporter warns that it is deprecated in favour of dynamo (see the module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (sample,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)


def onnx_session(path: str | Path, threads: int = 0):
    """An ONNX Runtime CPU session; threads: intra-op threads (0: ONNX Runtime's default, one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1  # one chain of ops: more inter-op threads only compete for the cores
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_network(session) -> Network:
    """The session as a Network (normalised input tensor -> logits tensor), like torch_network."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT], {INPUT: np.ascontiguousarray(x.numpy(), np.float32)})[0])

    return forward


def max_prob_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference between two N x classes probability arrays of the same films."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"probability arrays of shapes {a.shape} and {b.shape} do not describe the same films")
    return float(np.abs(a - b).max()) if a.size else 0.0


def check_batches(x: torch.Tensor) -> list[torch.Tensor]:
    """The batches the export is checked on: all films, each film alone, and all plus one (a batch size the
    trace never saw)."""
    return [x, *(x[i : i + 1] for i in range(len(x))), torch.cat([x, x[:1]])]


def compare(model: torch.nn.Module, session, x: torch.Tensor) -> float:
    """Max probability difference between PyTorch and ONNX Runtime over check_batches(x)."""
    ours, theirs = torch_network(model), onnx_network(session)
    return max(max_prob_diff(probabilities(ours, b), probabilities(theirs, b)) for b in check_batches(x))


def export_checked(model: torch.nn.Module, x: torch.Tensor, folder: Path) -> OnnxCheck:
    """Export `model` to folder/model.onnx and check it on `x` (normalised real films). Never raises for an
    export problem: the returned OnnxCheck says why there is no export."""
    path = Path(folder) / ONNX_FILE
    try:
        export_onnx(model, x, path)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types for an op it cannot express
        return _absent(path, f"export failed: {type(exc).__name__}: {first_line(exc)}")
    try:
        diff = compare(model, onnx_session(path), x)
    except ImportError as exc:
        return _absent(path, f"onnxruntime not installed ({exc})")
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime rejects an unusable graph with several types
        return _absent(path, f"ONNX Runtime cannot run the export: {type(exc).__name__}: {first_line(exc)}")
    if not diff <= TOLERANCE:  # `not <=` also refuses NaN
        return _absent(path, f"max probability difference {diff:.1e} > {TOLERANCE:.0e} on {len(x)} real film(s)")
    log.info("ONNX export checked on %d film(s): max probability difference %.1e", len(x), diff)
    return OnnxCheck(path, diff)


def _absent(path: Path, reason: str) -> OnnxCheck:
    path.unlink(missing_ok=True)
    log.warning("registering without the ONNX export: %s", reason)
    return OnnxCheck(None, reason=reason)
