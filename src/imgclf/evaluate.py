"""Metrics on a split: accuracy, per-class precision/recall/F1, macro F1 and the confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torchmetrics.functional.classification import (
    multiclass_accuracy, multiclass_confusion_matrix, multiclass_f1_score, multiclass_precision, multiclass_recall,
)


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and true labels of every batch, on the CPU."""
    model.eval()
    probs, labels = [], []
    for x, y in batches:
        probs.append(model(x).float().softmax(1).cpu())
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
