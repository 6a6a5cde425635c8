"""Tasks: what a label is, and everything that depends on it before and after the logits.

A task is one registered class (``@register_task``, :mod:`imgclf.tasks.base`); a loss is one registered
function per task (``@register_loss``, :mod:`imgclf.tasks.losses`). Another kind of label (ordinal grades,
"none of these" as a trained class) is another module here and its tests, not a walk through the package:
training, evaluation, prediction, export, serving, the errors analysis and the report ask the task.
"""

from __future__ import annotations

# the losses register, then the tasks: one label per image first, the default, listed first
# isort: off
from . import losses  # noqa: F401
from .single_label import SingleLabel
from .multi_label import MultiLabel

# isort: on
from .analysis import ErrorAnalysis, LabelErrorAnalysis, Mistake
from .base import (
    LABEL_SEPARATOR,
    UNKNOWN,
    Fitted,
    LossSettings,
    Prediction,
    Task,
    Tested,
    check_loss,
    get_task,
    label_names,
    register_loss,
    register_task,
    task_names,
    task_of,
)
from .losses import BinaryLoss, FocalLoss, LogitAdjusted

SINGLE_LABEL = get_task("single_label")
MULTI_LABEL = get_task("multi_label")

__all__ = [
    "LABEL_SEPARATOR",
    "MULTI_LABEL",
    "SINGLE_LABEL",
    "UNKNOWN",
    "BinaryLoss",
    "MultiLabel",
    "SingleLabel",
    "ErrorAnalysis",
    "Fitted",
    "FocalLoss",
    "LabelErrorAnalysis",
    "LogitAdjusted",
    "LossSettings",
    "Mistake",
    "Prediction",
    "Task",
    "Tested",
    "check_loss",
    "get_task",
    "label_names",
    "register_loss",
    "register_task",
    "task_names",
    "task_of",
]
