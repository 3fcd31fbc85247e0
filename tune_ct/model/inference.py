"""Running a network: the autocast dtype `precision` picks, host-to-device copies, softmax over cached images."""

from __future__ import annotations

import numpy as np
import torch

from tune_ct.data.files import CLASSES
from tune_ct.model.augment import to_model_input


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for fp32. 'auto' picks what the hardware does fast."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On CPUs without AVX512-BF16/AMX, bf16 autocast is emulated and slower than fp32.
    fast_bf16 = torch.cpu._is_avx512_bf16_supported() or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if fast_bf16 else None


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch -> device. On CUDA through pinned memory: a copy from pageable memory waits for the GPU to
    finish all queued work first, so the CPU could never prepare the next batch while the GPU computes."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch


def predict(model, pixels: np.ndarray, indices: np.ndarray, batch_size: int, device, dtype) -> np.ndarray:
    """Softmax probabilities (N x 4, float32) for the given rows of a uint8 image array, in indices' order."""
    # The bare module: DDP's forward may broadcast buffers, a collective that uneven val shards would deadlock.
    model = getattr(model, "module", model)
    model.eval()
    out = np.zeros((len(indices), len(CLASSES)), dtype=np.float32)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for start in range(0, len(indices), batch_size):
            rows = indices[start : start + batch_size]
            x = to_model_input(torch.from_numpy(np.asarray(pixels[rows])).to(device))
            x = x.contiguous(memory_format=torch.channels_last)
            out[start : start + len(rows)] = torch.softmax(model(x).float(), dim=1).cpu().numpy()
    return out


def cpu_ms_per_film(model: torch.nn.Module, films: np.ndarray, repeats: int = 5) -> float:
    """Milliseconds per film of the network's forward pass on one CPU thread, fp32, eager PyTorch: the fastest of
    `repeats` timed passes over `films` (uint8, N x H x W) after one untimed pass (the fastest, not the median:
    what other processes on the machine add is noise, never part of the network's cost). Measured on a CPU copy
    of the bare module, so a GPU trial gets the figure a CPU-only hospital machine would; the trial's thread count
    and its model are left as they were."""
    import copy
    import time

    bare = copy.deepcopy(getattr(model, "module", model)).to("cpu").float().eval()
    x = to_model_input(torch.from_numpy(np.ascontiguousarray(films))).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        with torch.no_grad():
            for i in range(repeats + 1):
                started = time.perf_counter()
                bare(x)
                if i:
                    times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return 1000.0 * min(times) / len(films)
