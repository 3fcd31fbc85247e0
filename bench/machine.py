"""The machine behind a benchmark's figures, as BENCHMARKS.md states it (the CPU model varies between machines)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """/proc/cpuinfo's model name, and whether bf16 autocast is fast here (AVX512-BF16) or ~10x slower (AVX2)."""
    text = Path("/proc/cpuinfo").read_text()
    for line in text.splitlines():
        if line.lower().startswith("model name"):
            bf16 = " (avx512_bf16)" if "avx512_bf16" in text else " (no avx512_bf16)"
            return line.split(":", 1)[1].strip() + bf16
    return platform.machine()
