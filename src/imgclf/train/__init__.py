"""Training: the pipeline (prepare, build, fit, finish), the trainer with its one step, events and their
sinks, optimizers and schedules."""

from .events import Event, Events, Sink
from .loop import FitResult, Trainer
from .optim import build_optimizer, lr_factor
from .pipeline import TrainResult, build_model, train_run
from .speed import seconds_per_image

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
