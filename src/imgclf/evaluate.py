"""Metrics on a split (accuracy, per-class precision/recall/F1, macro F1, confusion matrix) and the
run's saved test predictions."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import (
    multiclass_accuracy, multiclass_confusion_matrix, multiclass_f1_score, multiclass_precision, multiclass_recall,
)

from .errors import CheckpointError
from .fsutil import atomic_path


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


@dataclass
class SplitPredictions:
    """A split's predictions as a run keeps its test set's in ``test_predictions.pt``: what ``errors`` and ``report``
    read, so they need neither the dataset nor a forward pass. Only the top classes of each image are
    kept (enough for confidences and confusions, small for a thousand classes), plus the images of the
    most confident mistakes and of a few right answers to draw."""

    labels: torch.Tensor  # N, true classes
    top_index: torch.Tensor  # N x k, most probable classes first
    top_prob: torch.Tensor  # N x k, their probabilities
    example_index: torch.Tensor  # M, test indices whose images are kept
    example_images: torch.Tensor  # M x C x H x W uint8
    sources: list[str] | None = None  # N image files, for folder and CSV data

    TOP_K = 5
    WRONG_EXAMPLES = 64
    RIGHT_EXAMPLES = 16

    @property
    def predicted(self) -> torch.Tensor:
        return self.top_index[:, 0]

    @property
    def confidence(self) -> torch.Tensor:
        return self.top_prob[:, 0]

    @classmethod
    def from_probs(cls, probs: torch.Tensor, labels: torch.Tensor, images: torch.Tensor, seed: int = 0,
                   sources: list[str] | None = None) -> SplitPredictions:
        top_prob, top_index = probs.topk(min(cls.TOP_K, probs.shape[1]), dim=1)
        wrong = torch.nonzero(top_index[:, 0] != labels).flatten()
        wrong = wrong[top_prob[wrong, 0].argsort(descending=True, stable=True)][: cls.WRONG_EXAMPLES]
        right = torch.nonzero(top_index[:, 0] == labels).flatten()
        generator = torch.Generator().manual_seed(seed)
        right = right[torch.randperm(len(right), generator=generator)][: cls.RIGHT_EXAMPLES]
        examples = torch.cat([wrong, right])
        return cls(labels.clone(), top_index, top_prob.float(), examples, images[examples].clone(), sources)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            torch.save({field.name: getattr(self, field.name) for field in fields(self)}, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SplitPredictions:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            return cls(**{field.name: payload.get(field.name) for field in fields(cls)})
        except Exception as exc:  # damaged or from another version: the caller recomputes
            raise CheckpointError(f"{path}: unreadable test predictions ({exc.__class__.__name__})") from None
