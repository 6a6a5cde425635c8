"""The training losses, registered per task (``@register_loss``): a loss is added by one decorated function.
The first registered for a task is its default (`loss=auto`)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .base import LossSettings, register_loss


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


def _adjusted(loss: nn.Module, s: LossSettings) -> nn.Module:
    return loss if s.logit_offset is None else LogitAdjusted(loss, s.logit_offset)


def _one_label_only(s: LossSettings) -> None:
    if s.logit_offset is not None:
        raise ConfigError("`logit_adjustment` is for one label per image; use `class_weights` with several")


@register_loss("single_label", "ce")
def cross_entropy(s: LossSettings) -> nn.Module:
    """Takes class indices or, mixed, probabilities."""
    return _adjusted(nn.CrossEntropyLoss(weight=s.class_weights, label_smoothing=s.label_smoothing), s)


@register_loss("single_label", "focal")
def focal(s: LossSettings) -> nn.Module:
    return _adjusted(FocalLoss(s.gamma, s.class_weights, s.label_smoothing), s)


@register_loss("multi_label", "bce")
def binary_cross_entropy(s: LossSettings) -> nn.Module:
    _one_label_only(s)
    return BinaryLoss(None, s.class_weights, s.label_smoothing)


@register_loss("multi_label", "focal")
def sigmoid_focal(s: LossSettings) -> nn.Module:
    _one_label_only(s)
    return BinaryLoss(s.gamma, s.class_weights, s.label_smoothing)
