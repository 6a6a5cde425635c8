"""Training: the pipeline (prepare, build, fit, finish), the loop, optimizers and schedules."""

from .loop import FitResult, Trainer
from .optim import build_optimizer, build_scheduler, lr_factor
from .pipeline import TrainResult, build_model, train_run
from .speed import seconds_per_image

__all__ = [
    "FitResult",
    "TrainResult",
    "Trainer",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "seconds_per_image",
    "train_run",
]
