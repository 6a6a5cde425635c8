"""The learning-rate finder (Smith 2017, as fastai's ``lr_find`` and Lightning's ``Tuner.lr_find``): train
for a few hundred steps while the learning rate grows log-spaced from tiny to huge, and read off where
the loss falls fastest.

The model, data and optimizer are the ones ``train`` would build from the same settings, so the
suggestion is for the run you are about to start; nothing of the sweep is kept.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.loader import TrainBatches
from ..report.plots import plot_lr_sweep
from ..runtime import Log, seed_everything
from .optim import build_optimizer
from .pipeline import _train_batches, build, prepare

SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected (fastai's)
DIVERGED = 4.0  # the sweep stops once the smoothed loss exceeds this multiple of its minimum


@dataclass
class LrFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed training loss at each lr
    suggestion: float  # steepest descent of the loss
    min_loss_lr: float  # where the loss was lowest (the suggestion is usually 3-10x below it)
    plot: Path


def steepest(lrs: list[float], losses: list[float]) -> float:
    """The lr where the smoothed loss falls fastest against log(lr), before its minimum."""
    end = int(np.argmin(losses)) + 1
    if end < 3:
        return lrs[max(end - 1, 0)]
    slopes = np.gradient(np.asarray(losses[:end]), np.log(np.asarray(lrs[:end])))
    return lrs[int(np.argmin(slopes))]


def _epochs(batches: TrainBatches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches, epoch after epoch, for as many steps as the sweep takes."""
    for epoch in itertools.count(1):
        batches.set_epoch(epoch)
        yield from batches


def lr_find(
    cfg: TrainConfig, out: str | Path, log: Log, start_lr: float = 1e-6, end_lr: float = 10.0, steps: int = 100
) -> LrFindResult:
    """Sweep the learning rate over ``steps`` training steps and plot the loss into ``out``."""
    seed_everything(cfg.seed)
    prepared = prepare(cfg, log)
    cfg = prepared.cfg
    model = build(prepared, resuming=False, log=log)
    assert cfg.optimizer and cfg.weight_decay is not None and cfg.lr, "the recipe fills these"
    optimizer = build_optimizer(
        model, cfg.optimizer, start_lr, cfg.weight_decay, cfg.momentum, cfg.nesterov, cfg.norm_lr_scale or 1.0
    )
    ratios = [group["lr"] / start_lr for group in optimizer.param_groups]  # groups keep their relative lrs
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing or 0.0)
    batches = _train_batches(prepared)
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    model.train()
    for step, (x, y) in zip(range(steps), _epochs(batches)):
        lr = start_lr * (end_lr / start_lr) ** (step / max(steps - 1, 1))
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        average = SMOOTHING * average + (1 - SMOOTHING) * loss.item()
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        if not math.isfinite(smoothed) or smoothed > DIVERGED * best:
            break
        best = min(best, smoothed)
        lrs.append(lr)
        losses.append(smoothed)
    suggestion = steepest(lrs, losses)
    min_loss_lr = lrs[int(np.argmin(losses))]
    title = f"{prepared.data.name}, {cfg.model}, batch {cfg.batch_size}, {cfg.optimizer}"
    plot_lr_sweep(lrs, losses, suggestion, out, title)
    log(
        f"lr finder: {len(lrs)} steps from {start_lr:g} to {lrs[-1]:.3g}; steepest descent at lr {suggestion:.3g} "
        f"(lowest loss at {min_loss_lr:.3g}; the recipe's lr is {cfg.lr:.3g}); plot: {out}"
    )
    return LrFindResult(lrs, losses, suggestion, min_loss_lr, Path(out))
