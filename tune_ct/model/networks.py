"""Networks: any timm model, and the seed's Keras CNN registered in timm as `baseline_cnn`; 1 channel, 4 classes.

Every network enters through `timm.create_model`, so one name gives one model everywhere (factory, space check,
Grad-CAM's target layer). Models train from scratch unless the user names a local weights file (`--weights`) or
the space sets `pretrained: true`: timm's weights then come through the Hugging Face hub and its cache (HF_HOME;
HF_HUB_OFFLINE=1 reads the cache alone), checked by the search before any compute.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from tune_ct.data.files import CLASSES
from tune_ct.model.errors import PretrainedError
from tune_ct.model.preprocess import NORM_LAYERS

BASELINE = "baseline_cnn"
# timm reads `default_cfgs` of the module that registers a model. fixed_input_size makes timm pass the image size
# (from input_size, which build_model overrides per trial) to the constructor: the dense layer depends on it.
default_cfgs = generate_default_cfgs({BASELINE: {
    "num_classes": len(CLASSES), "input_size": (1, 128, 128), "fixed_input_size": True, "mean": (0.5,),
    "std": (0.25,), "first_conv": "features.0", "classifier": "head.1",
}})


class BaselineCNN(nn.Module):
    """The seed notebook's Keras network: 3x3 convs 16-32-64-64 each followed by 2x2 max-pool, dropout 0.35
    after the third block, dense 128 with L2 weight decay, 4 outputs."""

    def __init__(self, img_size=(128, 128), in_chans: int = 1, num_classes: int = len(CLASSES), l2: float = 1e-4):
        super().__init__()
        side = int(img_size[-1] if isinstance(img_size, (tuple, list)) else img_size)
        if side < 16:
            raise ValueError(f"baseline_cnn needs image_size >= 16 (four 2x2 pools), got {side}")
        layers: list[nn.Module] = []
        channels = [in_chans, 16, 32, 64, 64]
        for i in range(4):
            layers += [nn.Conv2d(channels[i], channels[i + 1], 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            if i == 2:
                layers.append(nn.Dropout(0.35))
        self.features = nn.Sequential(*layers)
        self.dense = nn.Linear(64 * (side // 16) ** 2, 128)
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(128, num_classes))
        self.l2 = l2
        # As timm models describe their stages: Grad-CAM weighs the ReLU after the last conv (1/8 of the image
        # side; the pool after it halves the resolution again and adds nothing to localisation).
        self.feature_info = [{"num_chs": 64, "reduction": 8, "module": "features.11"}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense(torch.flatten(self.features(x), 1)))

    def regularization_loss(self) -> torch.Tensor:
        # Keras' kernel_regularizer=l2(l2) on the dense layer adds l2 * sum(W^2) to the loss.
        return self.l2 * self.dense.weight.pow(2).sum()


@register_model
def baseline_cnn(pretrained: bool = False, **kwargs) -> BaselineCNN:
    return build_model_with_cfg(BaselineCNN, BASELINE, pretrained, **kwargs)


def is_known_backbone(name: str) -> bool:
    return bool(timm.is_model(name))


def build_model(backbone: str, image_size: int, weights: str | None = None, pretrained: bool = False,
                film_norm: str = "none", norm_layer: str = "batch") -> nn.Module:
    """A fresh model; `weights` is a local file (timm/torch state dict, a tune_ct checkpoint, or .safetensors) and
    wins over `pretrained` (timm's weights for the backbone, from the Hugging Face cache or hub). `film_norm`:
    per-film standardisation at the start of its forward (standardise_films); `norm_layer` (NORM_LAYERS)."""
    if not timm.is_model(backbone):
        raise ValueError(f"unknown backbone {backbone!r}: use {BASELINE} or a timm model name (timm.list_models())")
    if norm_layer != "batch":
        return standardise_films(group_norm_model(backbone, image_size, norm_layer, bool(weights) or pretrained),
                                 film_norm)
    # input_size sets the image size (baseline_cnn's dense layer depends on it); its channel count is the
    # *source* weights' (3 for ImageNet weights, 1 for baseline_cnn), which timm checks before it adapts the
    # first conv to our one channel.
    overlay = {"input_size": (_source_channels(backbone), image_size, image_size)}
    if weights:
        # timm adapts the first conv to 1 channel and drops a mismatched classifier when loading pretrained
        # weights; the overlay points it at the local file so it never reaches for a model hub.
        overlay.update({"file": str(_existing(weights)), "hf_hub_id": None, "url": None})
    # A backbone without published weights (baseline_cnn) trains from scratch: timm warns and initialises it.
    model = timm.create_model(backbone, pretrained=bool(weights) or pretrained, in_chans=1,
                              num_classes=len(CLASSES), pretrained_cfg_overlay=overlay)
    return standardise_films(model, film_norm)


GROUPS = 8  # GroupNorm's groups: divides every width of the ResNet and EfficientNet families


def group_norm_model(backbone: str, image_size: int, norm_layer: str, pretrained: bool) -> nn.Module:
    """The backbone with GroupNorm in place of BatchNorm, from scratch (weights trained with BatchNorm do not fit)."""
    from functools import partial

    from timm.layers import GroupNorm

    if norm_layer not in NORM_LAYERS:
        raise ValueError(f"norm_layer must be one of {', '.join(NORM_LAYERS)}, got {norm_layer!r}")
    if pretrained:
        raise ValueError(f"norm_layer: group trains {backbone} from scratch; pretrained weights (pretrained: true "
                         "or --weights) were trained with BatchNorm: use one or the other")
    overlay = {"input_size": (_source_channels(backbone), image_size, image_size)}
    try:
        return timm.create_model(backbone, in_chans=1, num_classes=len(CLASSES), pretrained_cfg_overlay=overlay,
                                 norm_layer=partial(GroupNorm, num_groups=GROUPS))
    except (TypeError, ValueError) as exc:  # no norm_layer argument, or a width GROUPS does not divide
        raise ValueError(f"norm_layer: group is not possible for backbone {backbone} ({str(exc)[:200]}); use "
                         "norm_layer: batch, or a ResNet or EfficientNet backbone") from None


PERCENTILES = (0.01, 0.99)


def _zscore(_module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return ((x - mean) / std, *args[1:])


def _percentile(_module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    flat = x.flatten(1).sort(dim=1).values  # a sort, not torch.quantile: the ONNX exporter has no quantile
    n = flat.shape[1]
    low = flat[:, int(PERCENTILES[0] * (n - 1))].view(-1, 1, 1, 1)
    high = flat[:, int(PERCENTILES[1] * (n - 1))].view(-1, 1, 1, 1)
    scaled = (x - low) / (high - low).clamp_min(1e-3)  # 1st-99th percentile -> 0..1, as films in [0, 1] are
    return (((scaled - 0.5) / 0.25), *args[1:])


def standardise_films(model: nn.Module, how: str) -> nn.Module:
    """Each film standardised on its own before the network sees it (a forward pre-hook, so the network keeps
    its timm attributes and state dict): zscore (zero mean, unit spread) or percentile (its 1st-99th percentile
    mapped to the range a film of the training set spans). Exposure and window differences between hospitals are
    then gone before the first layer; brightness and contrast augmentation then change nothing."""
    hooks = {"none": None, "zscore": _zscore, "percentile": _percentile}
    if how not in hooks:
        raise ValueError(f"film_norm must be one of {', '.join(hooks)}, got {how!r}")
    if hooks[how] is not None:
        model.register_forward_pre_hook(hooks[how])
    return model


def _source_channels(backbone: str) -> int:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone)
    return int((getattr(cfg, "input_size", None) or (3,))[0])


def hub_id(backbone: str) -> str | None:
    """The Hugging Face repo timm loads the backbone's default pretrained weights from (None: it has none)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone)  # a name without a tag gets the architecture's default one
    return getattr(cfg, "hf_hub_id", None) or None


def pretrained_weights(backbone: str) -> Path | None:
    """The cached file of the backbone's pretrained weights, fetched into the cache now if the hub is reachable
    (so trials load them offline); None when timm has no hub weights for it (it trains from scratch)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from timm.models._hub import hf_split

    repo = hub_id(backbone)
    if repo is None:
        return None
    repo_id, revision = hf_split(repo)
    reason = "not found"
    for filename in ("model.safetensors", "pytorch_model.bin"):  # timm's own order (safetensors first)
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        except LocalEntryNotFoundError as exc:  # offline, or the hub unreachable, and not in the cache
            reason = str(exc).splitlines()[0]
        except EntryNotFoundError:  # the hub has no file of that name: try the next
            continue
        except Exception as exc:  # noqa: BLE001 - HTTP errors (gated repo, server error) say why in one line
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    offline = " (HF_HUB_OFFLINE is set: only the cache is read)" if constants.HF_HUB_OFFLINE else ""
    raise PretrainedError(
        f"pretrained: true: the weights of {backbone} ({repo}) are neither in the Hugging Face cache "
        f"{constants.HF_HUB_CACHE} nor reachable{offline}: {reason}. Fetch them once on a machine online with "
        f"HF_HOME pointing at a cache the search can read, or pass --weights {backbone}=FILE")


def _existing(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"weights file {p} does not exist. tune_ct never downloads weights: download them yourself and pass "
            "the local path, or leave weights unset to train from scratch"
        )
    return p


def regularization_loss(model: nn.Module) -> torch.Tensor | None:
    inner = getattr(model, "module", model)  # unwrap DistributedDataParallel
    fn = getattr(inner, "regularization_loss", None)
    return fn() if fn else None
