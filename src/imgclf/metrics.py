"""Metrics of predictions against labels (torchmetrics): the single-label and the multi-label families,
the expected calibration error and coverage. The tasks (:mod:`imgclf.tasks`) choose which apply; training's
test metrics, ``evaluate`` and the benchmarks compute them here.

torchmetrics loads in about 1.7 s: it is imported when the first metrics are computed, not by every process
that imports the trainer (a run killed, stopped or failing before its test metrics never pays it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CALIBRATION_BINS = 15  # the usual count for the expected calibration error (Guo et al., 2017)
COVERAGE_THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)  # the confidences `evaluate` reports coverage at
THRESHOLD_GRID = torch.linspace(0.05, 0.95, 19)  # per-class thresholds tried on the validation split


def compute_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """One label per image: accuracy, macro F1, balanced accuracy, per-class precision/recall/F1, the
    confusion matrix, the log loss, the calibration error and coverage."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

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
        "balanced_accuracy": recall[support > 0].mean().item(),  # the mean of the present classes' recalls
        "loss": loss,
        "samples": len(labels),
        "per_class": {
            name: {
                "precision": precision[i].item(),
                "recall": recall[i].item(),
                "f1": f1[i].item(),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": multiclass_confusion_matrix(preds, labels, n).tolist(),
        "calibration_error": calibration_error(probs, labels),
        "coverage": coverage(probs, labels),
    }


def calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Expected calibration error (torchmetrics; 15 equal-width confidence bins, L1)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    if not len(labels):
        return 0.0
    return multiclass_calibration_error(probs.float(), labels, probs.shape[1], n_bins=CALIBRATION_BINS).item()


def coverage(
    probs: torch.Tensor, labels: torch.Tensor, thresholds: tuple[float, ...] = COVERAGE_THRESHOLDS
) -> list[dict[str, float | None]]:
    """At each confidence threshold: the share of images answered (the rest would be "unknown") and the
    accuracy on those answered (None where none is): what a user reads to choose ``min_confidence``."""
    confidence, predicted = probs.max(1)
    rows = []
    for threshold in thresholds:
        answered = confidence >= threshold
        n = int(answered.sum())
        accuracy = (predicted[answered] == labels[answered]).float().mean().item() if n else None
        rows.append({"min_confidence": threshold, "coverage": n / max(1, len(labels)), "accuracy": accuracy})
    return rows


def multilabel_metrics(
    probs: torch.Tensor, targets: torch.Tensor, classes: list[str], thresholds: torch.Tensor | list[float]
) -> dict[str, Any]:
    """Several labels per image (``targets`` N x classes of 0/1), each decided by its own threshold: macro
    and micro F1, mAP (the mean over classes of the average precision, threshold-free), subset accuracy (every
    label of an image right; also ``accuracy``), Hamming loss (the share of wrong image-label decisions), per
    class precision, recall, F1, average precision, support and threshold; the mean binary cross-entropy."""
    from torchmetrics.functional.classification import (
        multilabel_average_precision,
        multilabel_exact_match,
        multilabel_f1_score,
        multilabel_hamming_distance,
        multilabel_precision,
        multilabel_recall,
    )

    n = len(classes)
    cut = torch.as_tensor(thresholds, dtype=torch.float32).view(1, -1)
    preds = (probs.float() >= cut).long()  # decided here, per class: torchmetrics' own threshold is one number
    target = targets.round().long()
    support = target.sum(0)
    average_precision = multilabel_average_precision(probs.float(), target, n, average=None)
    present = support > 0  # a class with no positive test image has no average precision
    subset = multilabel_exact_match(preds, target, n).item() if len(target) else 0.0
    loss = nn.functional.binary_cross_entropy(probs.float().clamp(1e-7, 1 - 1e-7), target.float()).item()
    per_class = {
        "precision": multilabel_precision(preds, target, n, threshold=0.5, average=None),
        "recall": multilabel_recall(preds, target, n, threshold=0.5, average=None),
        "f1": multilabel_f1_score(preds, target, n, threshold=0.5, average=None),
    }
    return {
        "accuracy": subset,  # what a single number of "accuracy" means here: every label of the image right
        "subset_accuracy": subset,
        "hamming_loss": multilabel_hamming_distance(preds, target, n, threshold=0.5, average="micro").item(),
        "macro_f1": multilabel_f1_score(preds, target, n, threshold=0.5, average="macro").item(),
        "micro_f1": multilabel_f1_score(preds, target, n, threshold=0.5, average="micro").item(),
        "mAP": average_precision[present].mean().item() if present.any() else float("nan"),
        "balanced_accuracy": per_class["recall"][present].mean().item() if present.any() else float("nan"),
        "loss": loss,
        "samples": len(target),
        "labels_per_image": target.sum(1).float().mean().item() if len(target) else 0.0,
        "per_class": {
            name: {
                "precision": per_class["precision"][i].item(),
                "recall": per_class["recall"][i].item(),
                "f1": per_class["f1"][i].item(),
                "average_precision": average_precision[i].item() if present[i] else None,
                "support": int(support[i]),
                "threshold": float(cut[0, i]),
            }
            for i, name in enumerate(classes)
        },
    }


def best_thresholds(probs: torch.Tensor, targets: torch.Tensor, default: float = 0.5) -> tuple[list[float], list[str]]:
    """Per class, the threshold of :data:`THRESHOLD_GRID` with the best F1 on a held-out split (ties: the one
    nearest 0.5), and per class how it was chosen; a class without positive or without negative held-out
    images keeps ``default`` (its F1 does not depend on a threshold that no example tests)."""
    target = targets.round().bool()
    chosen, how = [], []
    for c in range(probs.shape[1]):
        positives = int(target[:, c].sum())
        if positives == 0 or positives == len(target):
            chosen.append(default)
            how.append(f"{default:g}: no {'positive' if positives == 0 else 'negative'} validation image")
            continue
        predicted = probs[:, c].view(-1, 1) >= THRESHOLD_GRID.view(1, -1)  # N x grid
        tp = (predicted & target[:, c].view(-1, 1)).sum(0).float()
        f1 = 2 * tp / (predicted.sum(0) + positives).float()
        nearest = -(THRESHOLD_GRID - 0.5).abs()
        best = int(torch.argmax(f1 * 1e6 + nearest))  # F1 first; among equal F1, the threshold nearest 0.5
        chosen.append(round(float(THRESHOLD_GRID[best]), 2))
        how.append(f"best validation F1 {float(f1[best]):.3f} over {positives} positive image(s)")
    return chosen, how


# ---------------------------------------------------------------- calibration: temperature scaling

MIN_MISTAKES = 5  # validation mistakes temperature scaling needs: with none, the best temperature is 0


def calibration_note(probs: torch.Tensor, labels: torch.Tensor) -> str | None:
    """Why temperature scaling would be meaningless on this validation split, or None when it is not."""
    mistakes = int((probs.argmax(1) != labels).sum())
    if mistakes < MIN_MISTAKES:
        return (
            f"not calibrated: {mistakes} validation mistake(s), fewer than {MIN_MISTAKES}; with (almost) none, "
            "the likelihood only grows as the temperature falls (a larger validation split helps)"
        )
    return None


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T that minimises the negative log-likelihood of ``softmax(log(probs) / T)`` on a held-out
    split (temperature scaling, Guo et al., 2017): one parameter, so the predicted classes never change.
    Dividing log-probabilities by T equals dividing the logits by T (softmax ignores a shift)."""
    log_probs = probs.double().clamp_min(1e-30).log()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(log_probs / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


CALIBRATION_FOLDS = 5


def temperature_held_out(probs: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """(log loss without, with temperature scaling), each validation image scored by a temperature fitted on
    the other folds: on a small validation split a fitted temperature can fit noise, and then it would make the
    test's probabilities worse (a 600-photo folder: test ECE 0.090 -> 0.107)."""
    from .data.splits import stratified_folds

    folds = stratified_folds(labels, CALIBRATION_FOLDS, seed)
    log_probs = probs.double().clamp_min(1e-30).log()
    scaled = torch.empty_like(log_probs)
    for k in range(CALIBRATION_FOLDS):
        held = folds == k
        if held.any():
            scaled[held] = log_probs[held] / fit_temperature(probs[~held], labels[~held])
    before = nn.functional.cross_entropy(log_probs, labels).item()
    return before, nn.functional.cross_entropy(scaled, labels).item()


def apply_temperature(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    return (probs.clamp_min(1e-30).log() / temperature).softmax(1)


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> list[dict[str, float]]:
    """Per confidence bin: its mean confidence, its accuracy and its count (the reliability diagram's bars)."""
    confidence, predicted = probs.max(1)
    index = (confidence * bins).long().clamp(max=bins - 1)
    correct = (predicted == labels).float()
    rows = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        rows.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "confidence": confidence[inside].mean().item() if n else (b + 0.5) / bins,
                "accuracy": correct[inside].mean().item() if n else 0.0,
                "count": n,
            }
        )
    return rows
