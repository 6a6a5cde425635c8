"""The learning-rate finder (Smith 2017, as fastai's ``lr_find`` and Lightning's ``Tuner.lr_find``): train
for a few hundred steps while the learning rate grows log-spaced from tiny to huge, and read off where
the loss falls.

The suggestion is fastai's "valley" rule: the longest stretch over which the smoothed loss keeps falling
(a longest decreasing subsequence of the curve), and the lr two thirds of the way along it (Lightning's
steepest point is noisy on small folders: one imgclf version suggested the sweep's first lr while its plot
fell steepest near 0.1). It is checked against the curve: a valley ending far below the loss's minimum
(or no lower than the curve's start) falls back to the minimum's lr / 10 (the other common rule), and the log
says which rule gave it.

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
from ..errors import ConfigError
from ..plots.figures import plot_lr_sweep
from ..runtime import Log, resolve_device, seed_everything
from .build import build, from_init, load, resolved, trainer_for
from .progress import progress_bar

SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected (fastai's)
DIVERGED = 4.0  # the sweep stops once the smoothed loss exceeds this multiple of its minimum


@dataclass
class LrFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed training loss at each lr
    suggestion: float  # the valley rule's lr (or the minimum's / 10, where the valley is implausible)
    min_loss_lr: float  # where the loss was lowest (the suggestion is usually 3-10x below it)
    plot: Path
    rule: str = "valley"  # which rule gave the suggestion: valley, or minimum/10


VALLEY_SHORTFALL = 100.0  # a valley whose lr is this far below the loss's minimum is noise, not the curve


def valley(lrs: list[float], losses: list[float]) -> tuple[float, str]:
    """(suggested lr, rule): fastai's valley, checked against the curve (see the module's text)."""
    n = len(losses)
    if n < 3:
        return lrs[0], "the sweep's first lr (too few steps to read a curve)"
    run_length = [1] * n  # the longest decreasing subsequence ending at each point
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run_length[i] < run_length[j] + 1:
                run_length[i] = run_length[j] + 1
        if run_length[i] > run_length[end]:
            end = i
            start = end - run_length[end]
    third = (end - start) / 3
    index = max(0, min(n - 1, start + int(third) + int(third / 2)))
    lowest = int(np.argmin(losses))
    if lrs[index] * VALLEY_SHORTFALL >= lrs[lowest] and losses[index] < losses[0]:
        return lrs[index], "valley: two thirds along the longest fall of the loss"
    # the valley is not where the curve falls (far below its minimum, or no lower than where it started):
    # the other common rule, the lowest loss's lr / 10, on the sweep's own grid
    tenth = int(np.argmin(np.abs(np.log(np.asarray(lrs[: lowest + 1])) - np.log(lrs[lowest] / 10))))
    return lrs[tenth], "the lowest loss's lr / 10 (the valley did not lie on the fall of the curve)"


MIN_SWEEP_STEPS = 10  # the valley rule reads a fall of the smoothed loss: fewer steps leave no curve to read


def check_sweep(start_lr: float, end_lr: float, steps: int) -> None:
    """A sweep that can be read, before any data is loaded, or a one-line error naming the flag."""
    if steps < MIN_SWEEP_STEPS:
        raise ConfigError(f"`steps` {steps}: a sweep needs at least {MIN_SWEEP_STEPS} steps (default 100)")
    if not 0 < start_lr < end_lr:
        raise ConfigError(
            f"`start_lr` {start_lr:g} and `end_lr` {end_lr:g}: the sweep rises from a positive start to a larger "
            "end (default 1e-06 to 10)"
        )


def lr_find(
    settings: TrainConfig,
    out: str | Path,
    log: Log,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    steps: int = 100,
) -> LrFindResult:
    """Sweep the learning rate over ``steps`` training steps and plot the loss into ``out``."""
    check_sweep(start_lr, end_lr, steps)
    seed_everything(settings.seed)
    # the plain step, as the sweep's lr moves; the model you name, or the cnn's recipe (the search trains, not sweeps)
    settings, init = from_init(settings.replace(_origin="lr finder: the plain step", ema=False, compile=False))
    device = resolve_device(settings.device)
    prepared = resolved(settings, load(settings, device, log), device, log, init=init)
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

    with progress_bar(steps, "lr sweep", unit="step") as bar:

        def on_step(step: int, loss: float) -> bool:
            bar.update()
            return record(step, loss)

        trainer.sweep(steps, on_step)
    suggestion, rule = valley(lrs, losses)
    min_loss_lr = lrs[int(np.argmin(losses))]
    title = f"{prepared.data.name}, {cfg.model.model}, batch {cfg.optim.batch_size}, {cfg.optim.optimizer}"
    plot_lr_sweep(lrs, losses, suggestion, out, title)
    log(
        f"lr finder: {len(lrs)} steps from lr {start_lr:g} to lr {lrs[-1]:.3g}; suggested lr {suggestion:.3g} ({rule}); "
        f"lowest loss at lr {min_loss_lr:.3g}; the recipe's lr is {cfg.optim.lr:.3g}; plot: {out}"
    )
    return LrFindResult(lrs, losses, suggestion, min_loss_lr, Path(out), rule)
