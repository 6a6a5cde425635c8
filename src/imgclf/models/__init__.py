"""Model registry: the tutorial networks, imgclf's ``cnn``, torchvision's ResNet-18, the shipped
``lite0`` (EfficientNet-Lite0 with ImageNet weights, offline), and any torchvision or timm
network by name (``torchvision:NAME``, ``timm:NAME``)."""

from . import tutorial, resnet, cnn, backbones, lite  # noqa: F401,I001  (registers the models in this listing order)
from .registry import (
    ModelSpec,
    count_parameters,
    create_model,
    get_model_spec,
    head_of,
    list_model_families,
    list_models,
    model_names,
    register_model,
    register_model_family,
)

__all__ = [
    "ModelSpec",
    "count_parameters",
    "create_model",
    "get_model_spec",
    "head_of",
    "list_model_families",
    "list_models",
    "model_names",
    "register_model",
    "register_model_family",
]
