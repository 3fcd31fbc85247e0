"""The model stage's errors, in a module that imports nothing heavy: the commands catch them, and a command's
--help or a refused input should not wait seconds for torch and timm to load."""

from __future__ import annotations


class PretrainedError(ValueError):
    """A backbone's pretrained weights are neither in the Hugging Face cache nor reachable."""
