"""Tasks: what a label is and how a model is scored against it. The trainer, lr-find, the budget probe and
the doctor's quick models take their loss from here, so another loss or another kind of label is added
in one place.

A task is one registered object (as a model or a dataset is): ``@register_task`` on a class.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from .registry import Registry


class Task(Protocol):
    name: str

    def criterion(
        self, label_smoothing: float, class_weights: torch.Tensor | None, logit_offset: torch.Tensor | None = None
    ) -> nn.Module:
        """The training loss: the mean over a batch of logits and targets; ``logit_offset`` is added to the
        logits in training only (logit adjustment)."""
        ...

    def summed_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The validation loss summed over a batch: the plain loss, with no smoothing or weights, so runs with
        other training settings compare."""
        ...

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """How many of the batch's predictions are right (a 0-d tensor on the device: no host sync)."""
        ...

    def class_hits(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(2, classes): per class, the images predicted right and the images, for balanced accuracy."""
        ...

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's outputs as probabilities."""
        ...


class LogitAdjusted(nn.Module):
    """A loss over the logits plus a fixed offset per class (Menon et al. 2021: tau x log prior), so training
    asks rare classes for a larger margin while the model's own logits stay unadjusted for prediction."""

    def __init__(self, loss: nn.Module, offset: torch.Tensor) -> None:
        super().__init__()
        self.loss = loss
        self.offset: torch.Tensor
        self.register_buffer("offset", offset)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits + self.offset.to(logits.dtype), targets)


_TASKS: Registry[Task] = Registry("task")


def register_task(cls: type) -> type:
    """Class decorator: ``@register_task class MyTask: name = "my_task"; ...``."""
    _TASKS.add(getattr(cls, "name"), cls())  # noqa: B009  the protocol's name, read off the class
    return cls


def get_task(name: str) -> Task:
    task = _TASKS.get(name)
    if task is None:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(_TASKS.names())}")
    return task


def task_names() -> list[str]:
    return _TASKS.names()


@register_task
class SingleLabel:
    """One class per image: softmax over the classes, cross-entropy, the most probable class decides."""

    name = "single_label"

    def criterion(
        self, label_smoothing: float, class_weights: torch.Tensor | None, logit_offset: torch.Tensor | None = None
    ) -> nn.Module:
        loss = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        return loss if logit_offset is None else LogitAdjusted(loss, logit_offset)

    def summed_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), targets, reduction="sum")

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(1) == targets).sum()

    def class_hits(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        right = targets[logits.argmax(1) == targets]
        return torch.stack([right.bincount(minlength=num_classes), targets.bincount(minlength=num_classes)])

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1)


SINGLE_LABEL = get_task("single_label")
