"""Tasks: what a label is and how a model is scored against it. The trainer, lr-find, the budget probe and
the doctor's quick models take their loss from here, so another loss or another kind of label is added
in one place.

A task is one registered object (as a model or a dataset is): ``@register_task`` on a class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .errors import ConfigError
from .registry import Registry


class Task(Protocol):
    name: str
    activation: str  # "softmax" or "sigmoid": what turns the network's logits into the probabilities predicted
    losses: tuple[str, ...]  # the `loss` settings it trains with, the first its default

    def criterion(
        self,
        label_smoothing: float,
        class_weights: torch.Tensor | None,
        logit_offset: torch.Tensor | None = None,
        loss: str = "auto",
        gamma: float = 2.0,
    ) -> nn.Module:
        """The training loss: the mean over a batch of logits and targets (hard or, mixed, soft);
        ``logit_offset`` is added to the logits in training only (logit adjustment)."""
        ...

    def soft_targets(self, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Targets as float N x classes, for mixing two images' labels (mixup, CutMix)."""
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

    def class_counts(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Images per class (for several labels: images carrying each label)."""
        ...

    def metrics(
        self, probs: torch.Tensor, labels: torch.Tensor, classes: list[str], thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """The split's metrics (:mod:`imgclf.metrics`)."""
        ...


def check_loss(task: Task, loss: str) -> str:
    """The loss ``loss`` names for this task (``auto``: the task's default), or a one-line error."""
    if loss == "auto":
        return task.losses[0]
    if loss not in task.losses:
        raise ConfigError(f"`loss` {loss}: not for {task.name.replace('_', '-')} data; use {' or '.join(task.losses)}")
    return loss


class FocalLoss(nn.Module):
    """Lin et al. 2017's focal loss over the softmax: cross-entropy with each target class's term scaled by
    (1 - p)^gamma, so the many easy examples weigh less than the few hard ones. Takes class indices or
    soft targets (mixup), label smoothing and class weights as ``nn.CrossEntropyLoss`` does, so that gamma 0
    is exactly it: class indices average over the targets' weights, soft targets over the images."""

    def __init__(self, gamma: float, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = logits.float().log_softmax(1)
        n_classes = logits.shape[1]
        soft = targets.float() if targets.dim() == 2 else nn.functional.one_hot(targets, n_classes).float()
        if self.label_smoothing:
            soft = soft * (1 - self.label_smoothing) + self.label_smoothing / n_classes
        weight = (
            self.weight.float().view(1, -1) if self.weight is not None else torch.ones(1, n_classes, device=soft.device)
        )
        terms = -soft * weight * (1 - log_p.exp()).pow(self.gamma) * log_p
        if targets.dim() == 2:  # probabilities: the mean over the images, as cross-entropy's
            return terms.sum() / len(targets)
        return terms.sum() / weight[0, targets].sum().clamp_min(1e-12)


class BinaryLoss(nn.Module):
    """Several labels per image: binary cross-entropy, or the sigmoid focal loss (Lin et al. 2017, alpha off),
    over every image-label pair, each class's terms scaled by its weight; the mean over the pairs."""

    def __init__(
        self, focal_gamma: float | None, weight: torch.Tensor | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.gamma, self.label_smoothing = focal_gamma, label_smoothing
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        target = targets.float()
        if self.label_smoothing:  # towards 1/2: each label is its own two-class problem
            target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        if self.gamma is None:
            terms = nn.functional.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        else:
            from torchvision.ops import sigmoid_focal_loss

            terms = sigmoid_focal_loss(logits.float(), target, alpha=-1, gamma=self.gamma, reduction="none")
        if self.weight is not None:
            terms = terms * self.weight.float().view(1, -1)
        return terms.mean()


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
    """One class per image: softmax over the classes, cross-entropy (or focal), the most probable class decides."""

    name = "single_label"
    activation = "softmax"
    losses: tuple[str, ...] = ("ce", "focal")

    def criterion(
        self,
        label_smoothing: float,
        class_weights: torch.Tensor | None,
        logit_offset: torch.Tensor | None = None,
        loss: str = "auto",
        gamma: float = 2.0,
    ) -> nn.Module:
        chosen: nn.Module
        if check_loss(self, loss) == "focal":
            chosen = FocalLoss(gamma, class_weights, label_smoothing)
        else:  # takes class indices or, mixed, probabilities
            chosen = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        return chosen if logit_offset is None else LogitAdjusted(chosen, logit_offset)

    def soft_targets(self, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        return targets.float() if targets.dim() == 2 else nn.functional.one_hot(targets, num_classes).float()

    def summed_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), targets, reduction="sum")

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hard = targets.argmax(1) if targets.dim() == 2 else targets  # mixed: the larger share's class
        return (logits.argmax(1) == hard).sum()

    def class_hits(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        right = targets[logits.argmax(1) == targets]
        return torch.stack([right.bincount(minlength=num_classes), targets.bincount(minlength=num_classes)])

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1)

    def class_counts(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        return torch.bincount(labels, minlength=num_classes)

    def metrics(
        self, probs: torch.Tensor, labels: torch.Tensor, classes: list[str], thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        from .metrics import compute_metrics

        return compute_metrics(probs, labels, classes)


@register_task
class MultiLabel:
    """Any number of classes per image (none too): a sigmoid per class, binary cross-entropy (or focal); each
    class is predicted where its probability reaches its own threshold, chosen on the validation split."""

    name = "multi_label"
    activation = "sigmoid"
    losses: tuple[str, ...] = ("bce", "focal")
    DECIDE_AT = 0.5  # during training (accuracy per epoch); the run's own thresholds are chosen after it

    def criterion(
        self,
        label_smoothing: float,
        class_weights: torch.Tensor | None,
        logit_offset: torch.Tensor | None = None,
        loss: str = "auto",
        gamma: float = 2.0,
    ) -> nn.Module:
        if logit_offset is not None:
            raise ConfigError("`logit_adjustment` is for one label per image; use `class_weights` with several")
        return BinaryLoss(gamma if check_loss(self, loss) == "focal" else None, class_weights, label_smoothing)

    def soft_targets(self, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        return targets.float()

    def summed_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per image, the mean over its labels of the binary cross-entropy; summed over the batch."""
        per_pair = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
        return per_pair.mean(1).sum()

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Images with every label right (subset accuracy) at probability 0.5."""
        return ((logits >= 0) == (targets >= 0.5)).all(1).sum()

    def class_hits(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Per class, its images found at 0.5 and its images: the mean of the classes' recalls."""
        positive = targets >= 0.5
        return torch.stack([(positive & (logits >= 0)).sum(0), positive.sum(0)]).long()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def class_counts(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        return labels.round().long().sum(0)

    def metrics(
        self, probs: torch.Tensor, labels: torch.Tensor, classes: list[str], thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        from .metrics import multilabel_metrics

        return multilabel_metrics(probs, labels, classes, thresholds or [self.DECIDE_AT] * len(classes))


def label_names(labels: torch.Tensor, classes: Sequence[str]) -> list[str]:
    """Each image's class, or (0/1 rows: several labels per image) its labels joined by ';' ('-' for none)."""
    if labels.dim() == 1:
        return [classes[i] for i in labels.tolist()]
    return [";".join(classes[c] for c in torch.nonzero(row).flatten().tolist()) or "-" for row in labels.round()]


def task_of(labels: torch.Tensor) -> Task:
    """The task a split's labels call for: class indices (N) are single-label, 0/1 rows (N x classes) multi-label."""
    return get_task("multi_label" if labels.dim() == 2 else "single_label")


SINGLE_LABEL = get_task("single_label")
MULTI_LABEL = get_task("multi_label")
