"""The learning-rate finder (Smith 2017, as fastai's ``lr_find`` and Lightning's ``Tuner.lr_find``): train
for a few hundred steps while the learning rate grows log-spaced from tiny to huge, and read off where
the loss falls fastest.

It rides on the run's own :class:`~imgclf.train.loop.Trainer`, as fastai's ``LRFinder`` rides on
``Learner.fit``: the model, data, optimizer groups (head and backbone, norm scales), class weights,
precision, clipping and a frozen backbone are those ``train`` builds from the same settings, and the sweep
is a per-step schedule on that trainer. The weights are restored after the sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..plots.figures import plot_lr_sweep
from ..runtime import Log, seed_everything
from .pipeline import build, prepare, trainer_for

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


def lr_find(
    settings: TrainConfig,
    out: str | Path,
    log: Log,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    steps: int = 100,
) -> LrFindResult:
    """Sweep the learning rate over ``steps`` training steps and plot the loss into ``out``."""
    seed_everything(settings.seed)
    prepared = prepare(settings.replace(ema=False, compile=False), log)  # the plain step, as the sweep's lr moves
    cfg = prepared.cfg
    model = build(prepared, resuming=False, log=log)
    peak = cfg.optim.lr  # the trainer's groups keep their ratios to it (head, backbone, norm scales)

    def lr_at(step: int) -> float:
        return start_lr * (end_lr / start_lr) ** (step / max(steps - 1, 1))

    trainer = trainer_for(prepared, model, val_batches=None, lr_lambda=lambda step: lr_at(step) / peak)
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf

    def record(step: int, loss: float) -> bool:
        nonlocal average, best
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        if not math.isfinite(smoothed) or smoothed > DIVERGED * best:
            return False
        best = min(best, smoothed)
        lrs.append(lr_at(step))
        losses.append(smoothed)
        return True

    trainer.sweep(steps, record)
    suggestion = steepest(lrs, losses)
    min_loss_lr = lrs[int(np.argmin(losses))]
    title = f"{prepared.data.name}, {cfg.model.model}, batch {cfg.optim.batch_size}, {cfg.optim.optimizer}"
    plot_lr_sweep(lrs, losses, suggestion, out, title)
    log(
        f"lr finder: {len(lrs)} steps from {start_lr:g} to {lrs[-1]:.3g}; steepest descent at lr {suggestion:.3g} "
        f"(lowest loss at {min_loss_lr:.3g}; the recipe's lr is {cfg.optim.lr:.3g}); plot: {out}"
    )
    return LrFindResult(lrs, losses, suggestion, min_loss_lr, Path(out))
