"""The model, layer by layer: output shape, parameters, multiply-adds and receptive field.

One forward pass of a dummy image with hooks on every leaf module records what each layer does. The
receptive field follows the usual recurrence (size r and jump j, the input-pixel distance between
neighbouring outputs): a layer with kernel k, stride s and dilation d gives r' = r + (d(k-1)) * j and
j' = j * s. It is tracked per tensor, so a residual block's shortcut does not shrink the main path's
field: where branches meet (an addition outside any module) the larger field wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..fsutil import atomic_write_json
from ..models import create_model
from ..plots.figures import plot_feature_maps, plot_kernels
from ..plots.tables import Table

if TYPE_CHECKING:
    from ..predict import Classifier


@dataclass
class LayerInfo:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int
    macs: int
    receptive_field: int | None  # pixels of the input that one output value sees (per side)
    jump: int | None  # input pixels between neighbouring outputs

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "output_shape": list(self.output_shape),
            "parameters": self.parameters,
            "macs": self.macs,
            "receptive_field": self.receptive_field,
            "jump": self.jump,
        }


def _pair(value: Any) -> int:
    """The first of a square layer's (h, w) settings."""
    return value[0] if isinstance(value, tuple) else int(value)


def _window(module: nn.Module, in_size: int, out_size: int) -> tuple[int, int, int] | None:
    """(kernel, stride, dilation) of a layer that slides a window over the image; None for others."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        dilation = _pair(getattr(module, "dilation", 1))
        return _pair(module.kernel_size), _pair(module.stride), dilation
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and out_size:
        stride = in_size // out_size
        return in_size - (out_size - 1) * stride, stride, 1
    return None


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one image through ``module``."""
    if isinstance(module, nn.Conv2d):
        per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return per_output * output[0].numel()
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def inspect_model(model: nn.Module, channels: int, image_size: int) -> list[LayerInfo]:
    """Per layer (each leaf, and each module with weights of its own), in execution order, for one ``channels``
    x ``image_size`` x ``image_size`` image."""
    fields: dict[int, tuple[int, int, int]] = {}  # id(tensor) -> (receptive field, jump, spatial size)
    layers: list[LayerInfo] = []
    names = {module: name for name, module in model.named_modules()}

    def field_of(x: torch.Tensor) -> tuple[int, int] | None:
        if id(x) in fields:
            return fields[id(x)][:2]
        if x.dim() != 4:
            return None
        # a tensor made outside any module (a residual sum, a reshape): the widest field of that size
        same_size = [(r, j) for r, j, size in fields.values() if size == x.shape[-1]]
        return max(same_size) if same_size else None

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        rf = field_of(x) if x is not None else None
        if x is not None and rf is not None and output.dim() == 4:
            window = _window(module, x.shape[-1], output.shape[-1])
            r, j = rf
            if window is not None:
                kernel, stride, dilation = window
                r, j = r + dilation * (kernel - 1) * j, j * stride
            fields[id(output)] = (r, j, output.shape[-1])
            rf = (r, j)
        elif output.dim() != 4:
            rf = None
        layers.append(
            LayerInfo(
                name=names.get(module, "?"),
                kind=type(module).__name__,
                output_shape=tuple(output.shape[1:]),
                parameters=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=_macs(module, output),
                receptive_field=rf[0] if rf else None,
                jump=rf[1] if rf else None,
            )
        )

    # the leaves, and modules that hold weights of their own beside children (timm's BatchNormAct2d: a batch norm
    # with its activation inside), whose weights a table of leaves would leave out; an Identity does nothing
    layered = [
        m
        for m in model.modules()
        if not isinstance(m, nn.Identity)
        and (not list(m.children()) or next(m.parameters(recurse=False), None) is not None)
    ]
    handles = [m.register_forward_hook(hook) for m in layered]
    x = torch.zeros(1, channels, image_size, image_size, device=next(model.parameters()).device)
    fields[id(x)] = (1, 1, image_size)
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(x)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return layers


def mlp_parameters_for(channels: int, image_size: int, num_classes: int) -> int:
    """Parameters of the plain ``mlp`` that would take the same input: the weight-sharing comparison."""
    return sum(p.numel() for p in create_model("mlp", channels, num_classes, image_size).parameters())


POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid)


def feature_maps(model: nn.Module, image: torch.Tensor, limit: int = 24) -> list[tuple[str, torch.Tensor]]:
    """The maps one normalised image (1 x C x H x W) produces after each conv block and each pooling.

    A conv block ends at its activation (conv -> norm -> activation), so the outputs of activation and
    pooling layers are taken, in execution order, while they are still images (2-D maps, larger than
    1x1); models with functional activations fall back to the conv outputs. At most ``limit`` maps.
    """
    captured: dict[str, list[tuple[str, torch.Tensor]]] = {"block": [], "conv": []}
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, _inputs: tuple, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() != 4 or output.shape[-1] * output.shape[-2] <= 1:
            return
        kind = "conv" if isinstance(module, nn.Conv2d) else "block"
        label = f"{names[module]} ({type(module).__name__})"
        captured[kind].append((label, output[0].detach().float().cpu()))

    watched = [m for m in model.modules() if isinstance(m, (*POOLS, *ACTIVATIONS, nn.Conv2d))]
    handles = [m.register_forward_hook(hook) for m in watched]
    try:
        model.eval()
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    maps = captured["block"] or captured["conv"]
    return maps[:limit]


def first_layer_kernels(model: nn.Module) -> torch.Tensor:
    """The first conv layer's kernels (out x in x k x k), as the network applies them to the image."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError("the model has no convolution layer")
    return conv.weight.detach().float().cpu()


# ---------------------------------------------------------------- a run's model, inspected


@dataclass
class InspectResult:
    layers: list[LayerInfo]
    parameters: int
    macs: int
    mlp_parameters: int
    channels: int
    image_size: int
    paths: dict[str, Path] = field(default_factory=dict)

    def layer_table(self) -> Table:
        return layer_table(self.layers)

    def weight_sharing_summary(self) -> str:
        """The totals beside the plain network on the same input: the weight-sharing argument, in numbers."""
        c, s = self.channels, self.image_size
        return (
            f"total: {self.parameters:,} parameters, {self.macs:,} multiply-adds per {c}x{s}x{s} image; "
            f"an mlp on the same {c * s * s:,} inputs has {self.mlp_parameters:,} parameters "
            f"({self.mlp_parameters / max(self.parameters, 1):.1f}x)"
        )


def layer_table(layers: Sequence[LayerInfo]) -> Table:
    return Table(
        ["layer", "type", "output", "parameters", "multiply-adds", "receptive field"],
        [
            [
                la.name,
                la.kind,
                "x".join(map(str, la.output_shape)),
                f"{la.parameters:,}",
                f"{la.macs:,}",
                "-" if la.receptive_field is None else f"{la.receptive_field} (jump {la.jump})",
            ]
            for la in layers
        ],
    )


def inspect_classifier(
    classifier: Classifier, pixels: torch.Tensor | None, folder: Path, log: Callable[[str], None]
) -> InspectResult:
    """Layers, kernels and (given one uint8 image) feature maps of a loaded model, written to ``folder``."""
    model, channels, size = classifier.model, classifier.channels, classifier.image_size
    layers = inspect_model(model, channels, size)
    result = InspectResult(
        layers,
        sum(p.numel() for p in model.parameters()),  # the model's own count, as the report's summary gives it
        sum(la.macs for la in layers),
        mlp_parameters_for(channels, size, len(classifier.classes)),
        channels,
        size,
    )
    result.paths["layers"] = folder / "layers.json"
    try:
        plot_kernels(first_layer_kernels(model), folder / "kernels.png")
        result.paths["kernels"] = folder / "kernels.png"
    except ValueError:  # a model without convolutions (mlp) has no kernels to draw
        pass
    if pixels is not None:
        result.paths["feature_maps"] = folder / "feature_maps.png"
        maps = feature_maps(model, classifier.normalise(pixels.unsqueeze(0)))
        plot_feature_maps(maps, result.paths["feature_maps"], image=pixels)
    atomic_write_json(
        result.paths["layers"],
        {
            "layers": [la.to_dict() for la in layers],
            "parameters": result.parameters,
            "macs": result.macs,
            "mlp_parameters": result.mlp_parameters,
            "input": [channels, size, size],
        },
    )
    log(result.layer_table().to_text())
    log(result.weight_sharing_summary())
    log(f"figures and layers.json in {folder}")
    return result
