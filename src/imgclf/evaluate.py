"""Metrics on a split: accuracy, per-class precision/recall/F1, macro F1 and the confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import (
    multiclass_accuracy, multiclass_confusion_matrix, multiclass_f1_score, multiclass_precision, multiclass_recall,
)


def _mirrored_logits(model: nn.Module, x: torch.Tensor, hflip: bool) -> torch.Tensor:
    logits = model(x).float()
    return 0.5 * (logits + model(x.flip(-1)).float()) if hflip else logits


def tta_logits(model: nn.Module, x: torch.Tensor, hflip: bool) -> torch.Tensor:
    """Test-time augmentation as in the airbench recipes: the image (and its mirror, where a flip keeps
    the label) weighs half; the two 1-pixel diagonal shifts (mirrored borders) a quarter each."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[-2:]
    shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
    shifted_logits = sum(_mirrored_logits(model, s.contiguous(memory_format=torch.channels_last), hflip) for s in shifted)
    return 0.5 * _mirrored_logits(model, x, hflip) + 0.25 * shifted_logits


@torch.inference_mode()
def predict_batches(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, tta: bool = False, hflip: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and true labels of every batch, on the CPU (with test-time augmentation if asked)."""
    model.eval()
    probs, labels = [], []
    for x, y in batches:
        logits = tta_logits(model, x, hflip) if tta else model(x).float()
        probs.append(logits.softmax(1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def compute_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    n = len(classes)
    preds = probs.argmax(1)
    precision = multiclass_precision(preds, labels, n, average=None)
    recall = multiclass_recall(preds, labels, n, average=None)
    f1 = multiclass_f1_score(preds, labels, n, average=None)
    support = torch.bincount(labels, minlength=n)
    loss = nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    return {
        "accuracy": multiclass_accuracy(preds, labels, n, average="micro").item(),
        "macro_f1": multiclass_f1_score(preds, labels, n, average="macro").item(),
        "loss": loss,
        "samples": len(labels),
        "per_class": {
            name: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": multiclass_confusion_matrix(preds, labels, n).tolist(),
    }
