"""ResNet-18 from torchvision, with ImageNet weights for transfer learning (the tutorial's setup)."""

from __future__ import annotations

import functools

from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.models import resnet18 as tv_resnet18

from .backbones import imagenet, load_torchvision_weights, set_input_channels
from .registry import register_model


@register_model(
    "resnet18",
    "torchvision ResNet-18; `pretrained` loads ImageNet weights (or `weights=FILE`) and replaces the head",
    head="fc",
    pretrained=imagenet(
        functools.partial(load_torchvision_weights, weights=ResNet18_Weights.IMAGENET1K_V1, name="resnet18"),
        num_features=512,
        licence="BSD-3-Clause (torchvision)",
    ),
)
def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return set_input_channels(tv_resnet18(weights=None, num_classes=num_classes), in_channels)
