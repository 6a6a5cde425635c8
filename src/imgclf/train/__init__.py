"""Training: the build layer (data and config in, model, batches and trainer out), the trainer with its one
step, the finish layer (test metrics through the task), the pipeline that orchestrates them, the search,
events and their sinks, optimizers and schedules.

Names load on first use: importing one piece (the trainer, the imbalance treatments) never loads the pipeline
and the search on top of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_LAZY = {
    "build_model": ".build",
    **dict.fromkeys(["Event", "Events", "Sink"], ".events"),
    "TrainResult": ".finish",
    **dict.fromkeys(["FitResult", "Trainer"], ".loop"),
    **dict.fromkeys(["build_optimizer", "lr_factor"], ".optim"),
    "train_run": ".pipeline",
    "seconds_per_image": ".speed",
}

if TYPE_CHECKING:
    from .build import build_model
    from .events import Event, Events, Sink
    from .finish import TrainResult
    from .loop import FitResult, Trainer
    from .optim import build_optimizer, lr_factor
    from .pipeline import train_run
    from .speed import seconds_per_image

__getattr__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "Event",
    "Events",
    "FitResult",
    "Sink",
    "TrainResult",
    "Trainer",
    "build_model",
    "build_optimizer",
    "lr_factor",
    "seconds_per_image",
    "train_run",
]
