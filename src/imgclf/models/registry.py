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
class PretrainedCfg:
    """A pretrained network's facts, as timm's ``PretrainedCfg`` keeps them: how its weights load, the
    normalisation they learned under, the size they were trained at, the smallest input the network takes,
    the smallest at which its features are worth a probe, and the width of the pooled features its class
    layer sees (what ``embed`` writes)."""

    load: Callable[[nn.Module, str | None], None]  # (model, a weights file or None: the library's own)
    mean: list[float]
    std: list[float]
    input_size: int = 224  # the side its weights were trained at
    min_size: int = 32  # the smallest side it takes (EfficientNets and ResNets downsample 32x)
    # ImageNet features need a few dozen pixels per object: smaller images are upsampled to here to probe
    # (CIFAR's 32 px: 64 and 96 px measured, bench/RESULTS.md 2026-11-29)
    useful_size: int = 96
    num_features: int | None = None  # the pooled features the class layer sees
    gmacs: float | None = None  # multiply-adds per image at input_size, in billions: what a size costs
    ships: bool = False  # its weights ship with imgclf (offline): `pretrained` unless set otherwise
    licence: str = ""

    def cost(self, size: int) -> float:
        """Multiply-adds per image at ``size`` relative to lite0's at 224 px (convolutions scale with the area)."""
        return (self.gmacs or LITE0_GMACS) / LITE0_GMACS * (size / self.input_size) ** 2

    def stats(self, channels: int) -> tuple[list[float], list[float]]:
        """The normalisation for ``channels`` (grey: the mean of RGB's)."""
        if channels == 3:
            return list(self.mean), list(self.std)
        return [sum(self.mean) / 3] * channels, [sum(self.std) / 3] * channels


LITE0_GMACS = 0.407  # the unit of :meth:`PretrainedCfg.cost`: EfficientNet-Lite0 at 224 px
IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    description: str
    head: str  # attribute of the classifier layer, kept trainable while the backbone is frozen ("": found by head_of)
    pretrained: PretrainedCfg | None = None  # None: it trains from scratch only


_MODELS: Registry[ModelSpec] = Registry("model")
_FAMILIES: dict[str, tuple[str, Callable[[str], ModelSpec]]] = {}  # prefix -> (description, spec for a name)


def register_model(
    name: str, description: str, head: str = "classifier", pretrained: PretrainedCfg | None = None
) -> Callable:
    """Decorator: ``@register_model("name", "what it is")`` on ``def build(in_channels, num_classes, image_size,
    **kwargs) -> nn.Module``; ``pretrained``: its weights' facts, where it has weights."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS.add(name, ModelSpec(name, fn, description, head, pretrained))
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
    """The normalisation a model's pretrained weights learned under, for ``channels`` (None: it has none)."""
    pretrained = get_model_spec(name).pretrained
    return pretrained.stats(channels) if pretrained is not None else None


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
