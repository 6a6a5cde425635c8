"""Optimizers and per-step learning-rate schedules (with linear warm-up)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    norm_lr_scale: float = 1.0,
    head: nn.Module | None = None,
    backbone_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """Parameters that the model left trainable, in three groups: conv/linear weights, normalisation
    layers' scales and shifts, and other biases (no weight decay: decaying them only hurts).

    With ``norm_lr_scale`` 1 the norm group gets no weight decay either. With a larger scale (the airbench
    recipes' 64) it steps that much faster while shrinking by the same amount per step as the weights
    (weight decay divided by the scale), as in those recipes.

    With ``backbone_lr_scale`` below 1, each group is split again: the ``head``'s parameters keep the lr,
    the rest (a pretrained backbone) learn at that fraction of it, so fine-tuning adapts rather than erases
    what the backbone knows.
    """
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim > 1]
    norms = [p for p in trainable if p.ndim <= 1 and id(p) in norm_ids]
    biases = [p for p in trainable if p.ndim <= 1 and id(p) not in norm_ids]
    norm_decay = weight_decay / norm_lr_scale if norm_lr_scale != 1 else 0.0
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": norms, "weight_decay": norm_decay, "lr": lr * norm_lr_scale},
        {"params": biases, "weight_decay": 0.0},
    ]
    if backbone_lr_scale != 1 and head is not None:
        head_ids = {id(p) for p in head.parameters()}
        groups = [
            {**group, "params": params, "lr": group.get("lr", lr) * (1 if in_head else backbone_lr_scale)}
            for group in groups
            for in_head, params in (
                (True, [p for p in group["params"] if id(p) in head_ids]),
                (False, [p for p in group["params"] if id(p) not in head_ids]),
            )
            if params
        ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


# the triangular one-cycle of the fast-training recipes starts at this fraction of the peak lr
ONECYCLE_START = 0.2


def lr_factor(schedule: str, total_steps: int, warmup_steps: int, final: float = 0.0) -> Callable[[int], float]:
    """Multiplier of the base learning rate at a step: linear warm-up, then constant, cosine or linear
    decay to ``final`` (a fraction of the peak)."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    start = ONECYCLE_START if schedule == "onecycle" else 0.0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start + (1 - start) * (step + 1) / (warmup_steps + 1)
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        if schedule == "cosine":
            return final + (1 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "onecycle":
            return 1.0 - (1.0 - final) * progress
        return 1.0

    return factor
