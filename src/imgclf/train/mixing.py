"""Mixup and CutMix: each training batch mixed with itself reversed, labels mixed in the same shares.

As timm's ``Mixup`` in its default batch mode: one share per batch drawn from Beta(alpha, alpha); with both
on, each batch takes one of the two, alike. Mixup blends the images (Zhang et al. 2018); CutMix pastes a box
of the partner image, the share set to the box's area (Yun et al. 2019). The targets become probabilities
(single-label: the two classes' shares; multi-label: the two label sets' 0/1 rows blended), which the
tasks' losses take. Draws are seeded by the step, so a resumed run mixes as it would have.
"""

from __future__ import annotations

import math

import torch

from ..tasks import Task


class Mixer:
    def __init__(self, mixup: float, cutmix: float, task: Task, num_classes: int, seed: int = 0) -> None:
        self.mixup, self.cutmix, self.task, self.num_classes, self.seed = mixup, cutmix, task, num_classes, seed

    @property
    def enabled(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or torch.rand((), generator=generator) < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        share = _beta(alpha, generator)
        partner_x, targets = x.flip(0), self.task.soft_targets(y, self.num_classes)
        if use_cutmix:
            x, share = _paste_box(x, partner_x, share, generator)
        else:
            x = x * share + partner_x * (1 - share)
        return x, targets * share + targets.flip(0) * (1 - share)


def _beta(alpha: float, generator: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw from the seeded generator: X / (X + Y) with X, Y ~ Gamma(alpha)."""
    gammas = torch._standard_gamma(torch.full((2,), float(alpha)), generator=generator)  # noqa: SLF001
    return float(gammas[0] / gammas.sum().clamp_min(1e-12))


def _paste_box(
    x: torch.Tensor, partner: torch.Tensor, share: float, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """``x`` with a box of ``partner`` pasted in (sides sqrt(1 - share) of the image's, centre uniform, clipped
    at the borders), and the share of ``x`` left: what the labels are mixed by."""
    h, w = x.shape[-2:]
    ratio = math.sqrt(1 - share)
    cy, cx = (int(torch.randint(n, (), generator=generator)) for n in (h, w))
    half_h, half_w = round(h * ratio / 2), round(w * ratio / 2)
    top, bottom = max(cy - half_h, 0), min(cy + half_h, h)
    left, right = max(cx - half_w, 0), min(cx + half_w, w)
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    return mixed, 1 - (bottom - top) * (right - left) / (h * w)
