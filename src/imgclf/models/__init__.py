"""Model registry: the tutorial networks, imgclf's ``cnn`` and torchvision's ResNet-18."""

from . import tutorial, resnet, cnn  # noqa: F401,I001  (registers the models in this listing order)
from .registry import (
    ModelSpec, count_parameters, create_model, get_model_spec, list_models, model_names, register_model,
)

__all__ = ["ModelSpec", "count_parameters", "create_model", "get_model_spec", "list_models", "model_names", "register_model"]
