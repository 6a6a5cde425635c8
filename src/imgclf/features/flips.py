"""Which flips keep the class, measured on the user's images before training uses them (``flips=auto``).

Inspection photos and cells keep their class under every flip and quarter turn, a street scene under the
mirror only, digits under none. For each of the mirror, the vertical flip and the transpose (with the
mirror, it makes the quarter turns), a linear probe on the shipped backbone's cached features is
cross-validated twice over a sample of the training and validation images: once as they are, once also
trained on the flipped copies (labelled as their images) and predicting each held-out image averaged with
its flipped copy, as augmentation and test-time augmentation would use it. The two are compared image by image
(a proper score, the log loss: a flip that confuses classes raises it): the mirror is kept unless it holds out
worse by more than the difference's standard error (most collections are mirror-symmetric, and a probe near
chance measures nothing), a vertical flip or a transpose only where it holds out better by more than it. Scoring a probe on flips it
never saw would not do: Fashion-MNIST's shoes all face left, so their mirrors are unfamiliar though still
shoes (the doctor's measurement, :mod:`imgclf.doctor.models`, which this one generalises).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..data import DataBundle
from ..data.images import fit_tensor
from ..data.splits import stratified_folds, stratified_sample
from ..recipes import PROBE_FOLDS, probe_recipe
from ..tasks import Task
from ..train.balance import Balance
from .backbone import Backbone, largest_probe_size
from .probe import fit_probe

FLIP_IMAGES = 2000  # images sampled (stratified) for the measurement: seconds of features at 96 px
FLIP_SIZE = 96  # at most: orientation is visible at low resolution, and features there cost little


def mirrored(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def upended(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2)


def transposed(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


FLIP_TESTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "horizontal": mirrored,
    "vertical": upended,
    "transpose": transposed,
}


@dataclass(frozen=True)
class FlipDecision:
    flips: str  # none, horizontal, vertical or all
    log_loss: dict[str, float]  # held-out log loss: "plain", and each flip tested
    stderr: dict[str, float]  # each flip's: the standard error of its difference to "plain", image by image
    why: str  # the sentence config.yaml's sources keep


def keeps_class(name: str, difference: float, stderr: float) -> bool:
    """Whether flip ``name`` keeps the class, from its held-out log loss minus the plain probe's: the mirror
    unless clearly worse, the others only when clearly better."""
    return difference < stderr if name == "horizontal" else difference < -stderr


def _held_out_log_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    flipped: torch.Tensor | None,
    num_classes: int,
    cfg: RunConfig,
    balance_of: Callable[[torch.Tensor], Balance],
    task: Task,
) -> torch.Tensor:
    several = labels.ndim == 2  # several labels an image: multi-hot rows, scored per label
    classes = labels.argmax(1) if several else labels  # the folds' strata
    folds = stratified_folds(classes, max(2, min(PROBE_FOLDS, int(torch.bincount(classes).min()))), cfg.seed)
    losses = torch.zeros(len(labels))
    for k in sorted(int(f) for f in folds.unique()):
        held = folds == k
        x, y = features[~held], labels[~held]
        if flipped is not None:
            x, y = torch.cat([x, flipped[~held]]), torch.cat([y, y])
        recipe = probe_recipe(cfg, len(y))
        result = fit_probe((x, y), (features[held], labels[held]), num_classes, recipe, balance_of(y), task)
        logits = result.logits(features[held])
        if flipped is not None:
            logits = 0.5 * (logits + result.logits(flipped[held]))
        if several:
            bce = torch.nn.functional.binary_cross_entropy_with_logits
            losses[held] = bce(logits, labels[held].float(), reduction="none").sum(1)
        else:
            losses[held] = torch.nn.functional.cross_entropy(logits, labels[held], reduction="none")
    return losses


def decide_flips(
    data: DataBundle,
    backbone: Backbone,
    cfg: RunConfig,
    balance_of: Callable[[torch.Tensor], Balance],
    cache_dir: str | Path | None,
) -> FlipDecision:
    """Measure which flips keep ``data``'s classes (see the module's text)."""
    images = torch.cat([torch.as_tensor(data.train.images), torch.as_tensor(data.val.images)])
    labels = torch.cat([data.train.labels, data.val.labels])
    index = stratified_sample(labels.argmax(1) if labels.ndim == 2 else labels, FLIP_IMAGES, cfg.seed)
    images, labels = images[index], labels[index]
    size = min(FLIP_SIZE, largest_probe_size(data.image_size))
    images = fit_tensor(images, size, "stretch") if images.shape[-1] != size else images
    tag = f"{data.name}-flips-{backbone.name}-{size}px"
    features = backbone.features(images, cache_dir, tag).values.float()
    plain = _held_out_log_loss(features, labels, None, data.num_classes, cfg, balance_of, data.task)
    losses, stderr, keeps = {"plain": plain.mean().item()}, {}, set()
    for name, flip in FLIP_TESTS.items():
        flipped = backbone.features(flip(images).contiguous(), cache_dir, f"{tag}-{name}").values.float()
        with_flip = _held_out_log_loss(features, labels, flipped, data.num_classes, cfg, balance_of, data.task)
        difference = with_flip - plain
        losses[name], stderr[name] = with_flip.mean().item(), (difference.std() / len(difference) ** 0.5).item()
        if keeps_class(name, difference.mean().item(), stderr[name]):
            keeps.add(name)
    if keeps == set(FLIP_TESTS):
        flips = "all"
    elif "horizontal" in keeps:
        flips = "horizontal"
    elif "vertical" in keeps:
        flips = "vertical"
    else:
        flips = "none"
    shown = ", ".join(
        f"{name} {loss:.3f}" + (f" ± {stderr[name]:.3f}" if name in stderr else "") for name, loss in losses.items()
    )
    why = (
        f"measured: a {backbone.name} probe at {size} px on {len(labels)} images, {PROBE_FOLDS}-fold held-out log "
        f"loss without flips and trained on each ({shown}; the mirror is kept unless clearly higher, the others "
        "where clearly lower)"
    )
    return FlipDecision(flips, losses, stderr, why)
