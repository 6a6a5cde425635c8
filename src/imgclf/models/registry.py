"""The model registry: adding a model is one decorated function (as in timm's ``register_model``).

A model function takes ``in_channels``, ``num_classes`` and ``image_size`` (plus its own keyword
arguments) and returns an ``nn.Module``; a checkpoint records the name and arguments to rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    description: str
    head: str  # attribute of the classifier layer, kept trainable while the backbone is frozen ("": found by head_of)
    load_pretrained: Callable[[nn.Module, str | None], None] | None = None
    pretrained_stats: tuple[list[float], list[float]] | None = None  # normalisation the weights expect
    pretrained_default: bool = False  # its weights ship with imgclf: `pretrained` unless set otherwise


_MODELS: Registry[ModelSpec] = Registry("model")
_FAMILIES: dict[str, tuple[str, Callable[[str], ModelSpec]]] = {}  # prefix -> (description, spec for a name)


def register_model(
    name: str,
    description: str,
    head: str = "classifier",
    load_pretrained: Callable[[nn.Module, str | None], None] | None = None,
    pretrained_stats: tuple[list[float], list[float]] | None = None,
    pretrained_default: bool = False,
) -> Callable:
    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS.add(name, ModelSpec(name, fn, description, head, load_pretrained, pretrained_stats, pretrained_default))
        return fn

    return decorator


def register_model_family(prefix: str, description: str, spec_for: Callable[[str], ModelSpec]) -> None:
    """Models named ``prefix:NAME`` (``torchvision:mobilenet_v3_small``), their spec made from NAME on demand."""
    _FAMILIES[prefix.casefold()] = (description, spec_for)


def list_model_families() -> list[tuple[str, str]]:
    return [(prefix, description) for prefix, (description, _) in _FAMILIES.items()]


def model_names() -> list[str]:
    return _MODELS.names()


def list_models() -> list[ModelSpec]:
    return list(_MODELS)


def get_model_spec(name: str) -> ModelSpec:
    prefix, _, arch = name.partition(":")
    if arch and prefix.casefold() in _FAMILIES:
        return _FAMILIES[prefix.casefold()][1](arch)
    spec = _MODELS.get(name)
    if spec is None:
        families = ", ".join(f"{p}:NAME" for p in _FAMILIES)
        raise ModelError(f"unknown model {name!r}: use one of {', '.join(_MODELS.names())}, {families}")
    return spec


def pretrained_stats(name: str, channels: int) -> tuple[list[float], list[float]] | None:
    """The normalisation a model's pretrained weights learned under, for ``channels`` (grey: the mean of RGB's)."""
    stats = get_model_spec(name).pretrained_stats
    if stats is None or channels == 3:
        return stats
    return [sum(stats[0]) / 3] * channels, [sum(stats[1]) / 3] * channels


def classifier_layer(model: nn.Module) -> str:
    """The dotted name of the class layer: the network's last linear layer (``fc``, ``classifier.3``)."""
    last = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not last:
        raise ModelError(f"{type(model).__name__}: no linear classifier layer found")
    return last[-1]


def head_of(model: nn.Module, spec: ModelSpec) -> str:
    """The top-level attribute holding the classifier: the spec's, else the one holding the class layer."""
    return spec.head or classifier_layer(model).split(".")[0]


def read_weights_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a weights file (plain, or inside an imgclf or Lightning checkpoint), without running code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"`weights` {path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 unpickling refused or corrupt
        raise ModelError(
            f"`weights` {path}: not a PyTorch weights file ({exc.__class__.__name__}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"`weights` {path}: expected a state dict (name -> tensor)")
    return state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def create_model(name: str, in_channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build a registered model and check that it accepts ``image_size`` inputs."""
    spec = get_model_spec(name)
    try:
        model = spec.build(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kwargs)
    except TypeError as exc:
        raise ModelError(f"model {name}: bad arguments ({exc})") from None
    except ValueError as exc:  # raised by models whose layers need a minimum size
        raise ModelError(f"model {name}: {exc}") from None
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, image_size, image_size))
    except RuntimeError:
        raise ModelError(
            f"model {name} cannot take {image_size}x{image_size} images; pass a larger `image_size` (e.g. 32)"
        ) from None
    if out.shape != (2, num_classes):
        raise ModelError(f"model {name} returned shape {tuple(out.shape)} for {num_classes} classes")
    return model.train()
