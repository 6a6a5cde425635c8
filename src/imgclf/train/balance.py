"""Imbalanced classes: loss weights per class, a logit offset (logit adjustment) or sampling weights per
image, as the config asks. Which of them is the default for imbalanced data was measured on real data thinned
to 1:20 (bench/imbalance.py, RESULTS.md), not assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import RunConfig
from ..tasks import task_of

EFFECTIVE_BETA = 0.999  # Cui et al. 2019's effective number (1 - beta^n) / (1 - beta); one of their grid's values


@dataclass(frozen=True)
class Balance:
    class_weights: torch.Tensor | None = None  # per class, mean 1: the loss's weights
    logit_offset: torch.Tensor | None = None  # per class: added to the logits in training
    sample_weights: torch.Tensor | None = None  # per training image: the sampler's odds


def class_weights(counts: list[int], method: str) -> torch.Tensor | None:
    """Loss weights for ``counts`` images per class, normalised to mean 1 (so the lr means the same)."""
    n = torch.tensor(counts, dtype=torch.float64).clamp_min(1)
    if method in ("inverse", "auto"):
        raw = 1 / n
    elif method == "sqrt":
        raw = n.rsqrt()
    elif method == "effective":
        raw = (1 - EFFECTIVE_BETA) / (1 - EFFECTIVE_BETA**n)
    else:
        return None
    return (raw / raw.mean()).float()


def logit_offset(counts: list[int], tau: float) -> torch.Tensor | None:
    """tau x log(each class's share of the training images), or None with tau 0."""
    if not tau:
        return None
    n = torch.tensor(counts, dtype=torch.float64).clamp_min(1)
    return (tau * (n / n.sum()).log()).float()


def balance_for(counts: list[int], labels: torch.Tensor, cfg: RunConfig) -> Balance:
    """The treatment ``cfg`` asks for, for training images of ``labels`` with ``counts`` per class."""
    inverse = 1.0 / torch.tensor(counts, dtype=torch.float64).clamp_min(1)
    if cfg.optim.sampler == "balanced":
        task_of(labels).check("sampler_balanced")
    return Balance(
        class_weights(counts, cfg.optim.class_weights),
        logit_offset(counts, cfg.optim.logit_adjustment),
        inverse[labels].float() if cfg.optim.sampler == "balanced" else None,
    )


def balancer(num_classes: int, cfg: RunConfig) -> Callable[[torch.Tensor], Balance]:
    """The treatment ``cfg`` asks for, for any subset of training labels (a probe's folds draw their own): one
    label an image, its counts' weights; several (multi-hot rows), none (their loss weighs each label alone)."""

    def balance_of(labels: torch.Tensor) -> Balance:
        if labels.ndim == 2:
            return Balance()
        return balance_for(torch.bincount(labels, minlength=num_classes).tolist(), labels, cfg)

    return balance_of
