"""Training: the loop, optimizers and schedules, checkpoints."""

from .checkpoint import read_checkpoint, save_checkpoint
from .loop import HISTORY_COLUMNS, FitResult, Trainer
from .optim import build_optimizer, build_scheduler, lr_factor
from .speed import seconds_per_image

__all__ = ["HISTORY_COLUMNS", "FitResult", "Trainer", "build_optimizer", "build_scheduler", "lr_factor", "read_checkpoint", "save_checkpoint",
           "seconds_per_image"]
