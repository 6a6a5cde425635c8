"""Which flips keep the class, measured on the user's images before training uses them (``flips=auto``).

Inspection photos and cells keep their class under every flip and quarter turn, a street scene under the
mirror only, digits under none. A flip is safe augmentation where it makes pictures the class already holds:
where, within each class, a flipped copy cannot be told from an original. So for each of the mirror, the
vertical flip and the transpose (with the mirror, it makes the quarter turns), a linear probe on the shipped
backbone's cached features learns, class by class, which images are flipped copies (one output per class and
side), cross-validated over a sample of the training and validation images; each held-out image and its copy
are shown to it as a pair, and it is right when it names the copy. Near chance (natural photos' mirrors: 0.51),
the flip keeps the class; told apart (digits' mirrors: 0.97; Fashion-MNIST's: 0.83, its shoes all face left;
photos upended: 0.77), it makes pictures the class does not hold, or another class's (a left arrow mirrored).
Two cheaper measurements fail where this one holds: a probe trained with flipped copies and scored on plain
images gains on digits (the copies add data that no held-out digit contradicts), and a probe scored on flips it
never saw stays right on mirrored digits (pooled ImageNet features barely change under a mirror). The doctor's
mirror check (:mod:`imgclf.doctor.models`) answers another question: whether its own probe's mirrored views
may be averaged.
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
from .backbone import Backbone, largest_probe_size
from .probe import fit_probe

FLIP_IMAGES = 2000  # images sampled (stratified) for the measurement: seconds of features at 96 px
FLIP_SIZE = 96  # at most: orientation is visible at low resolution, and features there cost little
TOLD_APART = 0.6  # a flip is dropped where copies are named clearly more often: photos' mirrors 0.51, digits' 0.97


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
    told_apart: dict[str, float]  # each flip's: how often a held-out probe names the flipped copy of a pair
    stderr: dict[str, float]  # and that rate's standard error, over the images
    why: str  # the sentence config.yaml's sources keep


def keeps_class(told_apart: float, stderr: float) -> bool:
    """Whether a flip keeps the class: unless a probe names the flipped copy of a pair clearly more often than
    ``TOLD_APART`` (by two standard errors: a few dozen images measure little, and then the flip stays)."""
    return told_apart - 2 * stderr <= TOLD_APART


def _told_apart(features: torch.Tensor, flipped: torch.Tensor, classes: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """Per image: 1 where a probe fitted on the other folds names its flipped copy (its odds of "flipped",
    within the image's class, are higher for the copy), 0.5 on a tie, else 0."""
    folds = stratified_folds(classes, max(2, min(PROBE_FOLDS, int(torch.bincount(classes).min()))), cfg.seed)
    named = torch.zeros(len(classes))
    rows = torch.arange(len(classes))
    for k in sorted(int(f) for f in folds.unique()):
        held = folds == k
        sides = torch.cat([2 * classes[~held], 2 * classes[~held] + 1])  # class c's originals 2c, copies 2c+1
        x = torch.cat([features[~held], flipped[~held]])
        probe = fit_probe((x, sides), (x[:1], sides[:1]), 2 * (int(classes.max()) + 1), probe_recipe(cfg, len(x)))
        c, r = classes[held], rows[: int(held.sum())]
        on_original, on_copy = probe.logits(features[held]), probe.logits(flipped[held])
        original = on_original[r, 2 * c + 1] - on_original[r, 2 * c]  # the odds of "flipped" within the class
        copy = on_copy[r, 2 * c + 1] - on_copy[r, 2 * c]
        named[held] = (copy > original).float() + 0.5 * (copy == original).float()
    return named


def decide_flips(
    data: DataBundle,
    backbone: Backbone,
    cfg: RunConfig,
    cache_dir: str | Path | None,
) -> FlipDecision:
    """Measure which flips keep ``data``'s classes (see the module's text)."""
    images = torch.cat([torch.as_tensor(data.train.images), torch.as_tensor(data.val.images)])
    labels = torch.cat([data.train.labels, data.val.labels])
    classes = labels.argmax(1) if labels.ndim == 2 else labels  # several labels an image: its first one's class
    index = stratified_sample(classes, FLIP_IMAGES, cfg.seed)
    images, classes = images[index], classes[index]
    size = min(FLIP_SIZE, largest_probe_size(data.image_size))
    images = fit_tensor(images, size, "stretch") if images.shape[-1] != size else images
    tag = f"{data.name}-flips-{backbone.name}-{size}px"
    features = backbone.features(images, cache_dir, tag).values.float()
    told_apart, stderr, keeps = {}, {}, set()
    for name, flip in FLIP_TESTS.items():
        flipped = backbone.features(flip(images).contiguous(), cache_dir, f"{tag}-{name}").values.float()
        named = _told_apart(features, flipped, classes, cfg)
        told_apart[name], stderr[name] = named.mean().item(), (named.std() / len(named) ** 0.5).item()
        if keeps_class(told_apart[name], stderr[name]):
            keeps.add(name)
    if keeps == set(FLIP_TESTS):
        flips = "all"
    elif "horizontal" in keeps:
        flips = "horizontal"
    elif "vertical" in keeps:
        flips = "vertical"
    else:
        flips = "none"
    shown = ", ".join(f"{name} {rate:.2f} ± {stderr[name]:.2f}" for name, rate in told_apart.items())
    why = (
        f"measured: how often a {backbone.name} probe at {size} px tells a flipped copy from its original within "
        f"its class, {PROBE_FOLDS}-fold held out on {len(classes)} images ({shown}; 0.5 is chance: a flip is kept "
        f"unless clearly above {TOLD_APART})"
    )
    return FlipDecision(flips, told_apart, stderr, why)
