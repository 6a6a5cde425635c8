"""Training: the build layer (data and config in, model, batches and trainer out), the trainer with its one
step, the finish layer (test metrics through the task), the pipeline that orchestrates them, the search,
events and their sinks, optimizers and schedules."""

from .build import build_model
from .events import Event, Events, Sink
from .finish import TrainResult
from .loop import FitResult, Trainer
from .optim import build_optimizer, lr_factor
from .pipeline import train_run
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
