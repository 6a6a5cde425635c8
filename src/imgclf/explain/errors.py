"""Where a model is wrong: its most confident mistakes, the class pairs it confuses, its worst classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..evaluate import SplitPredictions


@dataclass(frozen=True)
class Mistake:
    index: int  # position in the test split
    true: str
    predicted: str
    confidence: float  # probability of the predicted class
    source: str | None = None  # the image file, for folder and CSV data


@dataclass
class ErrorAnalysis:
    mistakes: list[Mistake]  # every wrong prediction, most confident first
    confused_pairs: list[tuple[str, str, int]]  # (true, predicted, count), most frequent first
    class_accuracy: list[tuple[str, float, int]]  # (class, accuracy, test images), worst first
    samples: int

    @property
    def accuracy(self) -> float:
        return 1 - len(self.mistakes) / max(self.samples, 1)

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        return {
            "samples": self.samples, "wrong": len(self.mistakes), "accuracy": self.accuracy,
            "most_confident_mistakes": [vars(m) for m in self.mistakes[:top]],
            "confused_pairs": [{"true": t, "predicted": p, "count": n} for t, p, n in self.confused_pairs],
            "class_accuracy": [{"class": c, "accuracy": a, "support": n} for c, a, n in self.class_accuracy],
        }


def analyse_errors(predictions: SplitPredictions, classes: list[str]) -> ErrorAnalysis:
    labels, predicted, confidence = predictions.labels, predictions.predicted, predictions.confidence
    wrong = torch.nonzero(predicted != labels).flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True, stable=True)]
    sources = predictions.sources
    mistakes = [Mistake(i, classes[labels[i]], classes[predicted[i]], confidence[i].item(), sources[i] if sources else None)
                for i in wrong.tolist()]

    n = len(classes)
    pairs = torch.bincount(labels[wrong] * n + predicted[wrong], minlength=n * n)
    counts, order = pairs.sort(descending=True, stable=True)
    confused = [(classes[k // n], classes[k % n], c) for k, c in zip(order.tolist(), counts.tolist()) if c > 0]

    support = torch.bincount(labels, minlength=n)
    right = torch.bincount(labels[predicted == labels], minlength=n)
    accuracy = right.double() / support.clamp_min(1)
    ranked = sorted((i for i in range(n) if support[i] > 0), key=lambda i: (accuracy[i].item(), classes[i]))
    per_class = [(classes[i], accuracy[i].item(), int(support[i])) for i in ranked]
    return ErrorAnalysis(mistakes, confused, per_class, len(labels))
