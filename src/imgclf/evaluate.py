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

from .config import DataConfig, TrainConfig, flatten
from .data import DataBundle, Split, load_data
from .errors import CheckpointError, ImgclfError
from .plots.tables import Table
from .predict import Classifier, load
from .rundir import TEST_PREDICTIONS, UNKNOWN, UNKNOWN_PLOT, RunDir, SplitMetrics, SplitPredictions
from .runtime import Log

EVAL_BATCH = 1024  # most images per forward pass when predicting a split
EVAL_BATCH_BYTES = 2**24  # ... and at most 16 MB of uint8 pixels (64 MB as floats): large images, small batches


def eval_batch(images: torch.Tensor) -> int:
    """Images per forward pass for a split of ``images`` (N x C x H x W): memory bounded by the image size."""
    return max(1, min(EVAL_BATCH, EVAL_BATCH_BYTES // max(1, images[0].numel() if len(images) else 1)))


def split_metrics(classifier: Classifier, split: Split, classes: list[str]) -> tuple[SplitMetrics, torch.Tensor]:
    """Metrics of ``classifier`` on a split (with the run's test-time augmentation, as it predicts everywhere),
    and its probabilities; ``accuracy_without_tta`` beside them when the run uses it."""
    probs = classifier.predict_proba(split.images, eval_batch(split.images))
    thresholds = classifier.thresholds
    metrics = SplitMetrics(classifier.task.metrics(probs, split.labels, classes, thresholds), classifier.spec.task)
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


def evaluate_run(path: str | os.PathLike, *, device: str = "auto", log: Log, **data: Any) -> SplitMetrics:
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
    log(classifier.task.per_class_table(metrics).to_text())
    for line in classifier.task.evaluation_lines(metrics, classifier.spec.temperature, classifier.threshold):
        log(line)
    if Path(path).is_dir():
        evaluation = {
            "task": classifier.spec.task,
            "test": metrics,
            "data": cfg.data,
            "checkpoint": str(classifier.path),
        }
        RunDir(path).write_evaluation(evaluation)
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
    classifier.task.check("negatives", str(path))
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
        plot_unknown_curve(result, run.output("evaluate --negatives", UNKNOWN_PLOT))
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
    predictions = SplitPredictions.from_probs(
        probs,
        data.test.labels,
        data.test.images,
        cfg.seed,
        data.test.sources,
        classifier.thresholds,
        classifier.spec.task,
    )
    run.save_predictions(predictions)
    return predictions
