"""Which pixels a prediction rests on: Grad-CAM on a conv block, or the input-gradient saliency.

The attributions themselves come from captum (``LayerGradCam``, ``Saliency``); this module picks the
layer, runs them for the predicted (or a chosen) class and turns them into 0..1 heat maps at the
image's size, ready to overlay.
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from matplotlib import colormaps
from PIL import Image
from torch import nn

from ..errors import ConfigError
from ..plots.figures import plot_explanations
from ..plots.tables import Table
from . import METHODS
from .inspect import POOLS

if TYPE_CHECKING:
    from ..predict import Classifier


@dataclass
class Explanation:
    heatmap: torch.Tensor  # H x W in 0..1, at the image's size
    target: int  # the explained class
    top_k: list[tuple[int, float]]  # (class, probability), most probable first
    method: str
    layer: str | None  # Grad-CAM's layer
    image: int = 0  # which of the explained images (a multi-label run explains each predicted label of an image)


def _spatial_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, output) of every module whose output is still an image (N x C x H x W, larger than 1x1),
    in the order the outputs are produced."""
    produced: list[tuple[str, torch.Tensor]] = []
    names = {module: name for name, module in model.named_modules() if name}

    def hook(module: nn.Module, _inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
            produced.append((names[module], output))  # the reference keeps ids unique during the pass

    handles = [module.register_forward_hook(hook) for module in names]
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return produced


def spatial_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of the layers Grad-CAM can explain, in execution order."""
    return [(name, tuple(out.shape[1:])) for name, out in _spatial_outputs(model, x)]


def last_conv_block(model: nn.Module, x: torch.Tensor) -> str:
    """The name of the module whose output is the network's last image-shaped tensor, pooling layers
    aside (a pool only resizes its block's output): the deepest block (a module with children) that
    produces it, as in Grad-CAM's usual ``layer4[-1]`` for a ResNet."""
    modules = dict(model.named_modules())
    produced = [(name, out) for name, out in _spatial_outputs(model, x) if not isinstance(modules[name], POOLS)]
    if not produced:
        raise ValueError("the model has no layer with a spatial output larger than 1x1 to explain")
    last = produced[-1][1]
    producers = [name for name, out in produced if out is last]
    blocks = [name for name in producers if list(modules[name].children())]
    return max(blocks, key=lambda name: name.count(".")) if blocks else producers[-1]


def _normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """N x H x W maps scaled to 0..1 each (an all-zero map stays zero)."""
    flat = maps.flatten(1)
    low, span = flat.min(1).values.view(-1, 1, 1), (flat.max(1).values - flat.min(1).values).view(-1, 1, 1)
    return torch.where(span > 1e-10, (maps - low) / span.clamp_min(1e-10), torch.zeros_like(maps)).clamp(0, 1)


def explain_images(
    model: nn.Module,
    x: torch.Tensor,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    target: int | torch.Tensor | None = None,
    top_k: int = 3,
    temperature: float = 1.0,
    probs: torch.Tensor | None = None,
) -> list[Explanation]:
    """Explain a normalised batch ``x`` (N x C x H x W): one heat map per image for ``target`` (a class, one
    class per image, or default the predicted class). ``layer`` names the Grad-CAM module (default: the last
    conv block). The top-k classes are those of ``probs`` when given (a classifier's, as it predicts), else of
    the model's own forward pass calibrated by ``temperature``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use {' or '.join(METHODS)}")
    model = model.eval()
    if probs is None:
        with torch.no_grad():
            probs = (model(x).float() / temperature).softmax(1)
    values, indices = probs.topk(max(1, min(top_k, probs.shape[1])), dim=1)
    if isinstance(target, torch.Tensor):
        targets = target.long()
    else:
        targets = indices[:, 0] if target is None else torch.full((len(x),), target, dtype=torch.long)
    inputs = x.detach().clone().requires_grad_(True)
    if method == "gradcam":
        layer = layer or last_conv_block(model, x)
        modules = dict(model.named_modules())
        if layer not in modules:
            raise KeyError(layer)
        attribution = LayerGradCam(model, modules[layer]).attribute(inputs, target=targets, relu_attributions=True)
        heat = LayerAttribution.interpolate(attribution.float(), tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    else:
        layer = None
        heat = Saliency(model).attribute(inputs, target=targets, abs=True).float().amax(1)
    heat = _normalise_maps(heat.detach().cpu())
    return [
        Explanation(heat[i], int(targets[i]), list(zip(indices[i].tolist(), values[i].tolist())), method, layer)
        for i in range(len(x))
    ]


def overlay_image(image: torch.Tensor, heatmap: torch.Tensor, size: int = 256, alpha: float = 0.45) -> Image.Image:
    """A uint8 C x H x W image with its 0..1 heat map blended on top in the colours of the report's
    figures (matplotlib's ``jet``), enlarged to ``size`` pixels for a screen."""
    rgb = image.expand(3, -1, -1).permute(1, 2, 0).float().numpy() / 255
    colours = colormaps["jet"](heatmap.clamp(0, 1).numpy())[..., :3]
    blended = ((1 - alpha) * rgb + alpha * colours).clip(0, 1)
    picture = Image.fromarray((blended * 255).round().astype("uint8"))
    return picture.resize((size, size), Image.Resampling.BILINEAR)


# ---------------------------------------------------------------- a run's model, explained

EXPLAIN_PAGE = 12  # images per explanation figure
EXPLAIN_BATCH = 32


@dataclass
class ExplainResult:
    sources: list[str]
    explanations: list[Explanation]
    classes: list[str]
    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # files inside given folders that were not usable

    def top_k(self, i: int) -> list[tuple[str, float]]:
        return [(self.classes[c], p) for c, p in self.explanations[i].top_k]

    def table(self) -> Table:
        k = len(self.explanations[0].top_k) if self.explanations else 0
        return Table(
            ["image", "explained", f"top {k} (probability)"],
            [
                [
                    s,
                    self.classes[self.explanations[i].target],
                    ", ".join(f"{label} {p:.3f}" for label, p in self.top_k(i)),
                ]
                for i, s in enumerate(self.sources)
            ],
        )


def explain_batch(
    classifier: Classifier,
    images: torch.Tensor,
    method: str,
    layer: str | None = None,
    target: str | None = None,
    top_k: int = 3,
    per_label: bool = True,
) -> list[Explanation]:
    """Explanations of a uint8 batch, in chunks, with the caller's mistakes (an unknown method, layer or
    class) as one-line errors that list the choices. The classes and probabilities are the classifier's
    (what ``predict`` says for the image); the heat map explains the network's plain forward pass. A
    multi-label run with no ``target`` explains each label predicted over its threshold (``per_label``; the
    most probable where none is), one explanation each, in image order."""
    model = classifier.model
    probe = classifier.normalise(images[:1])
    if method not in METHODS:
        raise ConfigError(f"`method` {method}: unknown; use {' or '.join(METHODS)}")
    if target is not None and target not in classifier.classes:
        raise ConfigError(
            f"`target` {target}: not a class of this model; choose one of {', '.join(classifier.classes[:20])}"
        )
    if method == "gradcam":
        names = [name for name, _ in spatial_layers(model, probe)]
        if not names:
            raise ConfigError(
                f"model {classifier.model_name} has no convolution layer for Grad-CAM; use `method=saliency`"
            )
        default = last_conv_block(model, probe)
        if layer is not None and layer not in names:
            # a backbone has hundreds of such layers: the closest names, else the default, not all of them
            near = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
            closest = f"closest: {', '.join(near)}; " if near else ""
            raise ConfigError(
                f"`layer` {layer}: not one of the model's {len(names)} layers with an image-shaped output; {closest}"
                f"the default is {default}; `imgclf inspect RUN` lists the layers"
            )
        layer = layer or default
    target_index = classifier.classes.index(target) if target is not None else None
    explanations: list[Explanation] = []
    for start in range(0, len(images), EXPLAIN_BATCH):
        chunk = images[start : start + EXPLAIN_BATCH]
        probs = classifier.predict_proba(chunk)  # as predict says it: calibrated, with the run's TTA
        rows, targets = torch.arange(len(chunk)), None
        pairs = classifier.task.explained_targets(probs, classifier.thresholds) if per_label else None
        if pairs is not None and target_index is None:  # a map per decided label (several labels per image)
            rows, targets = pairs
        chunk_explanations = explain_images(
            model,
            classifier.normalise(chunk[rows]),
            method=method,
            layer=layer,
            target=targets if targets is not None else target_index,
            top_k=top_k,
            probs=probs[rows],
        )
        for explanation, row in zip(chunk_explanations, rows.tolist()):
            explanation.image = start + row
        explanations += chunk_explanations
    return explanations


CAPTION_CHARS = 48  # characters a caption line holds over an image and its heat map at fontsize 7


def _titles(labels: Sequence[str], explanations: Sequence[Explanation], classes: Sequence[str]) -> list[str]:
    # wrapped, not cut: the true class is at the caption's end ("... (true automobile)")
    return [
        textwrap.fill(label + (f" -> {classes[e.target]}" if e.target != e.top_k[0][0] else ""), CAPTION_CHARS)
        + "\n"
        + ", ".join(f"{classes[c]} {p:.2f}" for c, p in e.top_k[:3])
        for label, e in zip(labels, explanations)
    ]


def plot_explanation_pages(
    images: torch.Tensor,
    labels: Sequence[str],
    explanations: Sequence[Explanation],
    classes: Sequence[str],
    folder: Path,
    stem: str,
) -> list[Path]:
    """The images beside their heat maps, ``EXPLAIN_PAGE`` to a figure: ``stem.png``, ``stem-2.png``..."""
    first = explanations[0]
    how = f"Grad-CAM on {first.layer}" if first.method == "gradcam" else "saliency (input gradient)"
    paths = []
    for page, start in enumerate(range(0, len(images), EXPLAIN_PAGE), 1):
        path = folder / (f"{stem}.png" if page == 1 else f"{stem}-{page}.png")
        chunk = slice(start, start + EXPLAIN_PAGE)
        plot_explanations(
            images[chunk],
            [e.heatmap for e in explanations[chunk]],
            _titles(labels[chunk], explanations[chunk], classes),
            path,
            f"{how}: what the explained class rests on (red; -> names it where it is not the top), top-3 probabilities",
        )
        paths.append(path)
    return paths


def explain_sources(
    classifier: Classifier,
    sources: list[str],
    images: torch.Tensor,
    *,
    method: str,
    layer: str | None,
    target: str | None,
    top_k: int,
    folder: Path,
    log: Callable[[str], None],
) -> ExplainResult:
    """Explain decoded images named by ``sources``; figures to ``folder``, the top classes to ``log``."""
    explanations = explain_batch(classifier, images, method, layer, target, top_k)
    index = [e.image for e in explanations]  # a multi-label run: an image once per predicted label
    sources = [sources[i] for i in index]
    result = ExplainResult(sources, explanations, classifier.classes)
    result.paths = plot_explanation_pages(
        images[index], [Path(s).name for s in sources], explanations, classifier.classes, folder, method
    )
    log(result.table().to_text())
    where = f" on layer {explanations[0].layer}" if method == "gradcam" else ""
    log(f"{method}{where}: {', '.join(str(p) for p in result.paths)}")
    return result
