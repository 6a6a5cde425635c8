"""Metrics on a split (accuracy, per-class precision/recall/F1, macro F1, confusion matrix), the
``evaluate`` command, and a run's saved test predictions (computed again for runs that lack them).

Training's final test metrics and ``evaluate`` both predict through :class:`imgclf.predict.Classifier`,
so re-evaluating a run reproduces its metrics exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import DataConfig, TrainConfig, flatten
from .data import DataBundle, Split, load_data
from .errors import CheckpointError, ConfigError, ImgclfError
from .metrics import CALIBRATION_BINS
from .plots.tables import Table
from .predict import Classifier, load
from .rundir import TEST_PREDICTIONS, UNKNOWN, UNKNOWN_PLOT, RunDir, SplitPredictions
from .runtime import Log

EVAL_BATCH = 1024  # most images per forward pass when predicting a split
EVAL_BATCH_BYTES = 2**24  # ... and at most 16 MB of uint8 pixels (64 MB as floats): large images, small batches


def eval_batch(images: torch.Tensor) -> int:
    """Images per forward pass for a split of ``images`` (N x C x H x W): memory bounded by the image size."""
    return max(1, min(EVAL_BATCH, EVAL_BATCH_BYTES // max(1, images[0].numel() if len(images) else 1)))


# ---------------------------------------------------------------- calibration and "unknown"

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


def coverage_table(rows: list[dict[str, Any]]) -> Table:
    return Table(
        ["min confidence", "answered", "accuracy when answered"],
        [
            [
                f"{r['min_confidence']:.2f}",
                f"{r['coverage']:.1%}",
                "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
            ]
            for r in rows
        ],
    )


def per_class_table(metrics: dict[str, Any]) -> Table:
    """Precision, recall, F1 and support per class, then accuracy and macro F1: the terminal's and the report's.
    Several labels per image: each class's average precision and threshold too, then subset accuracy, macro and
    micro F1, mAP and the Hamming loss."""
    if metrics.get("task") == "multi_label":
        return _multilabel_table(metrics)
    rows: list[list[Any]] = [
        [name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]]
        for name, m in metrics["per_class"].items()
    ]
    rows.append(["accuracy", "", "", f"{metrics['accuracy']:.4f}", metrics["samples"]])
    rows.append(["macro f1", "", "", f"{metrics['macro_f1']:.4f}", ""])
    if "balanced_accuracy" in metrics:  # runs before imgclf 0.3 lack it
        rows.append(["balanced accuracy", "", "", f"{metrics['balanced_accuracy']:.4f}", ""])
    return Table(["class", "precision", "recall", "f1", "support"], rows)


def _multilabel_table(metrics: dict[str, Any]) -> Table:
    def ap(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    rows: list[list[Any]] = [
        [
            name,
            f"{m['precision']:.4f}",
            f"{m['recall']:.4f}",
            f"{m['f1']:.4f}",
            ap(m["average_precision"]),
            f"{m['threshold']:.2f}",
            m["support"],
        ]
        for name, m in metrics["per_class"].items()
    ]
    for label, key in (
        ("subset accuracy", "subset_accuracy"),
        ("macro f1", "macro_f1"),
        ("micro f1", "micro_f1"),
        ("mAP", "mAP"),
        ("hamming loss", "hamming_loss"),
    ):
        rows.append(
            [label, "", "", f"{metrics[key]:.4f}", "", "", metrics["samples"] if key == "subset_accuracy" else ""]
        )
    return Table(["class", "precision", "recall", "f1", "average precision", "threshold", "images with it"], rows)


def split_metrics(classifier: Classifier, split: Split, classes: list[str]) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics of ``classifier`` on a split (with the run's test-time augmentation, as it predicts everywhere),
    and its probabilities; ``accuracy_without_tta`` beside them when the run uses it."""
    probs = classifier.predict_proba(split.images, eval_batch(split.images))
    thresholds = classifier.thresholds if classifier.multi_label else None
    metrics = classifier.task.metrics(probs, split.labels, classes, thresholds)
    if classifier.tta:
        plain = classifier.predict_proba(split.images, eval_batch(split.images), tta=False)
        metrics["accuracy_without_tta"] = classifier.task.metrics(plain, split.labels, classes, thresholds)["accuracy"]
    return metrics, probs


def checkpoint_data(
    classifier: Classifier, source: str | os.PathLike, **overrides: Any
) -> tuple[DataConfig, DataBundle]:
    """The data a checkpoint was trained on (or other data given by ``overrides``), checked to have its classes."""
    saved = {**flatten(classifier.config), "image_size": classifier.image_size, **overrides}
    cfg = TrainConfig.from_dict(saved, source=str(source)).data_config
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
    metrics, _ = split_metrics(classifier, dataset.test, dataset.classes)
    log(per_class_table(metrics).to_text())
    if classifier.multi_label:
        log(
            f"thresholds: {'the run`s own, chosen on validation' if classifier.threshold is None else classifier.threshold}"
        )
        if Path(path).is_dir():
            RunDir(path).write_evaluation({"test": metrics, "data": cfg.data, "checkpoint": str(classifier.path)})
        return metrics
    log(
        f"expected calibration error {metrics['calibration_error']:.4f} (temperature {classifier.spec.temperature:.3f})"
    )
    log("coverage: how many answers `min_confidence` leaves (the rest are `unknown`), and how many of them are right")
    log(coverage_table(metrics["coverage"]).to_text())
    if Path(path).is_dir():
        RunDir(path).write_evaluation({"test": metrics, "data": cfg.data, "checkpoint": str(classifier.path)})
    return metrics


# ---------------------------------------------------------------- "none of these": unrelated images

UNKNOWN_COVERAGES = (1.0, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.5)  # shares of real images kept, the curve's points
CHOSEN_AT = 0.95  # the score that accepts fewer unrelated images while keeping 95% of real ones is used
REFERENCE_IMAGES = 20_000  # training embeddings kept for the distance score, at most (float16: ~2.5 KB each)


def neighbours_k(reference: int) -> int:
    """k of the k-NN distance: 50 for a 50,000-image training set as Sun et al. (2022), 1 for 1,000 or fewer."""
    return max(1, min(50, round(reference / 1000)))


def unknown_curve(
    real: torch.Tensor, correct: torch.Tensor, unrelated: torch.Tensor, coverages: tuple[float, ...] = UNKNOWN_COVERAGES
) -> list[dict[str, float | None]]:
    """Per share of real images to keep: the threshold on the score (higher: more familiar) that keeps it,
    the accuracy on the real images kept, and the share of unrelated images accepted."""
    ordered = real.sort(descending=True).values
    rows: list[dict[str, float | None]] = []
    for share in coverages:
        threshold = float(ordered[max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))])
        kept = real >= threshold
        rows.append(
            {
                "coverage": kept.float().mean().item(),
                "threshold": threshold,
                "accuracy": correct[kept].float().mean().item() if kept.any() else None,
                "unrelated_accepted": (unrelated >= threshold).float().mean().item(),
            }
        )
    return rows


def _auroc(real: torch.Tensor, unrelated: torch.Tensor) -> float:
    """The chance that a real image scores above an unrelated one (ties half)."""
    from torchmetrics.functional.classification import binary_auroc

    scores = torch.cat([real, unrelated]).float()
    target = torch.cat([torch.ones(len(real)), torch.zeros(len(unrelated))]).long()
    return binary_auroc(scores, target).item()


def _at(rows: list[dict[str, Any]], share: float) -> dict[str, Any]:
    return min(rows, key=lambda r: abs(r["coverage"] - share))


def evaluate_negatives(
    path: str | os.PathLike, negatives: str | os.PathLike, *, device: str = "auto", log: Log, **data: Any
) -> dict[str, Any]:
    """How well a run says "none of these": its test images against ``negatives`` (a folder of images of none
    of its classes), for the calibrated top probability and for familiarity (:class:`imgclf.predict.Novelty`:
    the k-NN distance to the training images' embeddings, calibrated on the validation split). Per share of
    real images kept, the unrelated ones accepted; the score accepting fewer at 95% becomes what the run's
    ``min_confidence`` reads. Written to the run's unknown.json (with the reference embeddings)."""
    from .predict import Novelty

    classifier = load(path, device=device)
    if classifier.multi_label:
        raise ConfigError(
            f"{path}: `negatives` measures `unknown`, an answer of one-label runs; a multi-label run answers an "
            "unrelated image with no label over its threshold"
        )
    classifier.novelty = None  # measured afresh
    cfg, dataset = checkpoint_data(classifier, classifier.path or path, **data)
    sources, unrelated_images, skipped = classifier.read_images([negatives])
    log(
        f"{len(sources):,} unrelated images from {negatives}"
        + (f" ({len(skipped)} unusable skipped)" if skipped else "")
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    train = dataset.train.images
    if len(train) > REFERENCE_IMAGES:
        train = train[torch.randperm(len(train), generator=generator)[:REFERENCE_IMAGES].sort().values]
    calibration = dataset.val if len(dataset.val) >= 50 else dataset.test
    reference = Novelty.unit(classifier.features(train))
    novelty = Novelty(reference, neighbours_k(len(reference)), torch.zeros(0))
    novelty.real = novelty.distances(classifier.features(calibration.images)).sort().values
    test = dataset.test
    probs = classifier.predict_proba(test.images, eval_batch(test.images))
    unrelated_probs = classifier.predict_proba(unrelated_images, eval_batch(unrelated_images))
    correct = probs.argmax(1) == test.labels
    scores = {
        "probability": (probs.max(1).values, unrelated_probs.max(1).values),
        "familiarity": (
            novelty.familiarity(classifier.features(test.images)),
            novelty.familiarity(classifier.features(unrelated_images)),
        ),
    }
    curves = {name: unknown_curve(real, correct, other) for name, (real, other) in scores.items()}
    auroc = {name: _auroc(real, other) for name, (real, other) in scores.items()}
    chosen = min(curves, key=lambda name: (_at(curves[name], CHOSEN_AT)["unrelated_accepted"], name != "probability"))
    result = {
        "negatives": str(negatives),
        "unrelated_images": len(sources),
        "real_images": len(test),
        "curves": curves,
        "auroc": auroc,
        "chosen": chosen,
        "chosen_at_coverage": CHOSEN_AT,
        "k": novelty.k,
        "reference_images": len(reference),
        "real_distances": novelty.real.tolist(),
    }
    log(unknown_table(result).to_text())
    at = {name: _at(rows, CHOSEN_AT) for name, rows in curves.items()}
    log(
        f"at {CHOSEN_AT:.0%} of real images kept: probability accepts {at['probability']['unrelated_accepted']:.1%} "
        f"of the unrelated images, familiarity {at['familiarity']['unrelated_accepted']:.1%}: `min_confidence` now "
        f"reads {chosen} (threshold {at[chosen]['threshold']:.3f} keeps {at[chosen]['coverage']:.1%})"
    )
    if Path(path).is_dir():
        from .plots.figures import plot_unknown_curve

        run = RunDir(path)
        run.write_unknown(result, reference.half().numpy())
        plot_unknown_curve(result, run / UNKNOWN_PLOT)
        log(f"written: {run / UNKNOWN}, {run / UNKNOWN_PLOT} (the report shows them)")
    return result


def unknown_table(result: dict[str, Any]) -> Table:
    """Per share of real images kept: each score's threshold, accuracy and unrelated images accepted."""
    names = list(result["curves"])
    rows = []
    for i, row in enumerate(result["curves"][names[0]]):
        cells = [f"{row['coverage']:.1%}"]
        for name in names:
            r = result["curves"][name][i]
            accuracy = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            cells += [f"{r['threshold']:.3f}", accuracy, f"{r['unrelated_accepted']:.1%}"]
        rows.append(cells)
    header = ["real kept"] + [
        f"{n} {col}" for n in names for col in ("min_confidence", "accuracy", "unrelated accepted")
    ]
    return Table(header, rows)


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
    probs = classifier.predict_proba(data.test.images, eval_batch(data.test.images))
    thresholds = classifier.thresholds if classifier.multi_label else None
    predictions = SplitPredictions.from_probs(
        probs, data.test.labels, data.test.images, cfg.seed, data.test.sources, thresholds
    )
    run.save_predictions(predictions)
    return predictions
