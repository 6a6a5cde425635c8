"""Any classification network of torchvision or timm by name: ``torchvision:mobilenet_v3_small``,
``timm:resnet50``. The class count is set when the network is built, other channel counts than RGB
replace the first convolution, and ``--pretrained`` loads the library's ImageNet weights (torchvision's
weights enum, timm's hub) or ``--weights FILE``, keeping this dataset's new head.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

from ..errors import ModelError
from .registry import (
    IMAGENET_STATS,
    ModelSpec,
    PretrainedCfg,
    classifier_layer,
    read_weights_file,
    register_model_family,
)


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """(name, conv) of the first convolution: the stem that sees the image."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ModelError("the model has no convolution to take the image's channels")


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    """A conv's 2-D setting (torch types it as a tuple of any length)."""
    return value[0], value[1]


def set_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the stem convolution with one of ``in_channels`` inputs (same kernel, stride, padding)."""
    name, conv = _first_conv(model)
    if conv.in_channels != in_channels:
        parent, _, attribute = name.rpartition(".")
        padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
        stem = nn.Conv2d(
            in_channels,
            conv.out_channels,
            _pair(conv.kernel_size),
            _pair(conv.stride),
            padding,
            _pair(conv.dilation),
            conv.groups,
            conv.bias is not None,
        )
        setattr(model.get_submodule(parent), attribute, stem)
    return model


def fit_pretrained_state(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, name: str = "this model"
) -> None:
    """Load ImageNet weights into ``model``, leaving out its class layer (this dataset's is new) and fitting
    its stem to the image's channels: a grey stem gets the RGB kernels summed, which is what a grey image fed
    as RGB would see. Anything else that does not fit is an error naming the weights."""
    own = model.state_dict()
    stem_name, stem = _first_conv(model)
    kernels = state.get(f"{stem_name}.weight")
    if kernels is not None and kernels.shape[1] != stem.in_channels:
        channels = stem.in_channels
        state[f"{stem_name}.weight"] = (
            kernels.sum(1, keepdim=True) if channels == 1 else kernels.mean(1, keepdim=True).repeat(1, channels, 1, 1)
        )
    head = classifier_layer(model) + "."
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.startswith(head)]
    if bad or missing:
        raise ModelError(
            f"{source} do not fit {name} ({len(bad)} unexpected, {len(missing)} missing tensors, "
            f"e.g. {(bad + missing)[0]}); pass weights of the same architecture"
        )
    model.load_state_dict(state, strict=False)
    # the new head starts at zero, every class at equal odds: a random head over pretrained features starts
    # far off (timm's EfficientNet init scales with 1/sqrt(classes): logits of +-20 for 10 classes)
    for parameter in model.get_submodule(classifier_layer(model)).parameters():
        nn.init.zeros_(parameter)


def imagenet(load: Callable[[nn.Module, str | None], None], **facts: Any) -> PretrainedCfg:
    """An ImageNet network's facts: its loader, ImageNet's normalisation, 224 px."""
    return PretrainedCfg(load, *IMAGENET_STATS, **facts)


# --- torchvision ---------------------------------------------------------------------------------------


def load_torchvision_weights(
    model: nn.Module, weights_file: str | None, *, weights: torchvision.models.WeightsEnum, name: str
) -> None:
    """ImageNet weights from torchvision's enum (downloaded and cached by torch.hub) or a local file."""
    if weights_file:
        fit_pretrained_state(model, read_weights_file(weights_file), f"`weights` {weights_file}", name)
        return
    try:
        state = weights.get_state_dict(progress=True)
    except Exception as exc:  # noqa: BLE001 a download fails in many ways (URLError, HTTPError, OSError...)
        raise ModelError(
            f"could not download {name}'s ImageNet weights ({exc.__class__.__name__}); download "
            f"{weights.url} elsewhere and pass `weights=FILE`"
        ) from None
    fit_pretrained_state(model, state, f"{name} ImageNet weights", name)


def _torchvision_spec(arch: str) -> ModelSpec:
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(
            f"torchvision:{arch}: not a torchvision classification model; e.g. torchvision:mobilenet_v3_small, "
            "torchvision:efficientnet_b0 (torchvision.models.list_models() lists them)"
        )

    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return set_input_channels(
            torchvision.models.get_model(arch, weights=None, num_classes=num_classes), in_channels
        )

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    load = functools.partial(load_torchvision_weights, weights=weights, name=arch)
    return ModelSpec(f"torchvision:{arch}", build, f"torchvision's {arch}", head="", pretrained=imagenet(load))


# --- timm ----------------------------------------------------------------------------------------------


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need timm: pip install timm (or pip install 'imgclf[timm]')") from None
    return timm


def _timm_spec(arch: str) -> ModelSpec:
    timm = _timm()
    if not timm.is_model(arch):
        raise ModelError(f"timm:{arch}: not a timm model; timm.list_models('*name*') finds them")

    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)

    def load_pretrained(model: nn.Module, weights_file: str | None) -> None:
        if weights_file:
            fit_pretrained_state(model, read_weights_file(weights_file), f"`weights` {weights_file}", arch)
            return
        try:  # timm downloads from the Hugging Face hub and adapts the stem and the head itself
            source = timm.create_model(
                arch, pretrained=True, num_classes=model.num_classes, in_chans=_first_conv(model)[1].in_channels
            )
        except Exception as exc:  # noqa: BLE001 a download fails in many ways (URLError, HTTPError, OSError...)
            raise ModelError(
                f"could not download {arch}'s pretrained weights ({exc.__class__.__name__}); save its "
                "state dict elsewhere and pass `weights=FILE`"
            ) from None
        model.load_state_dict(source.state_dict())

    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None:
        return ModelSpec(f"timm:{arch}", build, f"timm's {arch}", head="", pretrained=imagenet(load_pretrained))
    facts = PretrainedCfg(
        load_pretrained,
        list(cfg.mean),
        list(cfg.std),
        input_size=int(cfg.input_size[-1]),
        min_size=int(cfg.min_input_size[-1]) if cfg.min_input_size else 32,
        licence=str(cfg.license or ""),
    )
    return ModelSpec(f"timm:{arch}", build, f"timm's {arch}", head="", pretrained=facts)


register_model_family(
    "torchvision",
    "any torchvision classification model by name, e.g. torchvision:mobilenet_v3_small",
    _torchvision_spec,
)
register_model_family("timm", "any timm model by name (pip install timm), e.g. timm:resnet50", _timm_spec)
