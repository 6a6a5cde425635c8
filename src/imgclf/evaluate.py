"""Metrics on a split (accuracy, per-class precision/recall/F1, macro F1, confusion matrix), the
``evaluate`` command, and a run's saved test predictions (computed again for runs that lack them).

Training's final test metrics and ``evaluate`` both predict through :class:`imgclf.predict.Classifier`,
so re-evaluating a run reproduces its metrics exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from .config import TrainConfig
from .data import DataBundle, Split, load_data
from .errors import CheckpointError, ImgclfError
from .predict import Classifier, load
from .report.tables import Table
from .rundir import TEST_PREDICTIONS, RunDir, SplitPredictions
from .runtime import Log

EVAL_BATCH = 1024  # most images per forward pass when predicting a split
EVAL_BATCH_BYTES = 2**24  # ... and at most 16 MB of uint8 pixels (64 MB as floats): large images, small batches


def eval_batch(images: torch.Tensor) -> int:
    """Images per forward pass for a split of ``images`` (N x C x H x W): memory bounded by the image size."""
    return max(1, min(EVAL_BATCH, EVAL_BATCH_BYTES // max(1, images[0].numel() if len(images) else 1)))


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
            name: {
                "precision": precision[i].item(),
                "recall": recall[i].item(),
                "f1": f1[i].item(),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": multiclass_confusion_matrix(preds, labels, n).tolist(),
    }


def per_class_table(metrics: dict[str, Any]) -> Table:
    """Precision, recall, F1 and support per class, then accuracy and macro F1: the terminal's and the report's."""
    rows: list[list[Any]] = [
        [name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]]
        for name, m in metrics["per_class"].items()
    ]
    rows.append(["accuracy", "", "", f"{metrics['accuracy']:.4f}", metrics["samples"]])
    rows.append(["macro f1", "", "", f"{metrics['macro_f1']:.4f}", ""])
    return Table(["class", "precision", "recall", "f1", "support"], rows)


def split_metrics(
    classifier: Classifier, split: Split, classes: list[str], tta: bool
) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics of ``classifier`` on a split, and its probabilities; ``accuracy_without_tta`` beside them when ``tta``."""
    probs = classifier.predict_proba(split.images, eval_batch(split.images), tta=tta)
    metrics = compute_metrics(probs, split.labels, classes)
    if tta:
        plain = classifier.predict_proba(split.images, eval_batch(split.images))
        metrics["accuracy_without_tta"] = (plain.argmax(1) == split.labels).float().mean().item()
    return metrics, probs


def checkpoint_data(
    classifier: Classifier, source: str | os.PathLike, **overrides: Any
) -> tuple[TrainConfig, DataBundle]:
    """The data a checkpoint was trained on (or other data given by ``overrides``), checked to have its classes."""
    cfg = TrainConfig.from_dict(
        {**classifier.config, "image_size": classifier.image_size, **overrides}, source=str(source)
    )
    dataset = load_data(cfg)
    if dataset.classes != classifier.classes or dataset.channels != classifier.channels:
        raise CheckpointError(
            f"{source}: the model knows {len(classifier.classes)} classes ({', '.join(classifier.classes[:5])}...) "
            f"with {classifier.channels} channel(s), but {cfg.data} has {dataset.num_classes} ({', '.join(dataset.classes[:5])}...) "
            f"with {dataset.channels}; use data with the same classes"
        )
    return cfg, dataset


def evaluate_run(path: str | os.PathLike, *, device: str = "auto", log: Log, **data: Any) -> dict[str, Any]:
    """Test metrics of a run or checkpoint on its test split (or other ``data``: ``data``, ``data_dir``,
    ``images``); saved as the run's evaluation.json."""
    classifier = load(path, device=device)
    cfg, dataset = checkpoint_data(classifier, classifier.path or path, **data)
    if dataset.skipped:
        log(
            f"warning: skipped {len(dataset.skipped)} unusable file(s): "
            + "; ".join(f"{p} ({reason})" for p, reason in dataset.skipped[:5])
            + (" ..." if len(dataset.skipped) > 5 else "")
        )
    metrics, _ = split_metrics(classifier, dataset.test, dataset.classes, tta=classifier.spec.tta)
    log(per_class_table(metrics).to_text())
    if Path(path).is_dir():
        RunDir(path).write_evaluation({"test": metrics, "data": cfg.data, "checkpoint": str(classifier.path)})
    return metrics


def test_predictions(run: RunDir, classifier: Classifier, log: Log) -> SplitPredictions:
    """The run's saved test predictions, computed (and saved) from its data for runs that lack them."""
    path = run / TEST_PREDICTIONS
    try:
        return run.read_predictions()
    except CheckpointError as exc:
        if path.is_file():
            log(f"warning: {exc}; predicting the test split again")
        else:
            log(f"{path.name} is missing (a run from an older imgclf): predicting the test split once")
    try:
        cfg, data = checkpoint_data(classifier, run.path)
    except ImgclfError as exc:
        raise CheckpointError(
            f"{run.path}: has no readable {path.name} and its data cannot be loaded ({exc}); "
            "restore the data, or train the run again"
        ) from None
    probs = classifier.predict_proba(data.test.images, eval_batch(data.test.images), tta=classifier.spec.tta)
    predictions = SplitPredictions.from_probs(probs, data.test.labels, data.test.images, cfg.seed, data.test.sources)
    run.save_predictions(predictions)
    return predictions
