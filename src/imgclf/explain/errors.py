"""Where a model is wrong: its most confident mistakes, the class pairs it confuses, its worst classes; for a
multi-label run, the labels it misses and the ones it adds (spurious), per image and per class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..fsutil import atomic_write_json
from ..plots.figures import plot_image_grid
from ..plots.tables import Table
from ..rundir import SplitPredictions


@dataclass(frozen=True)
class Mistake:
    index: int  # position in the test split
    true: str
    predicted: str
    confidence: float  # probability of the predicted class (multi-label: the largest miss of a threshold)
    source: str | None = None  # the image file, for folder and CSV data
    missed: list[str] | None = None  # multi-label: true labels not predicted
    spurious: list[str] | None = None  # multi-label: labels predicted that are not true


@dataclass
class ErrorAnalysis:
    mistakes: list[Mistake]  # every wrong prediction, most confident first
    confused_pairs: list[tuple[str, str, int]]  # (true, predicted, count), most frequent first
    class_accuracy: list[tuple[str, float, int]]  # (class, accuracy, test images), worst first
    samples: int
    multi_label: bool = False  # confused_pairs are then (label, "missed" or "spurious", count)

    @property
    def accuracy(self) -> float:
        return 1 - len(self.mistakes) / max(self.samples, 1)

    def class_accuracy_table(self) -> Table:
        header = ["label", "decided right", "images with it"] if self.multi_label else ["class", "accuracy", "images"]
        return Table(header, [[c, f"{a:.4f}", n] for c, a, n in self.class_accuracy])

    def confused_pairs_table(self, top: int = 10) -> Table:
        header = ["label", "missed or spurious", "images"] if self.multi_label else ["true", "predicted as", "count"]
        return Table(header, [list(p) for p in self.confused_pairs[:top]])

    def mistakes_table(self, top: int) -> Table:
        if self.multi_label:
            return Table(
                ["test #", "true", "predicted", "missed", "spurious", "file"],
                [
                    [m.index, m.true, m.predicted, ";".join(m.missed or []), ";".join(m.spurious or []), m.source or ""]
                    for m in self.mistakes[:top]
                ],
            )
        return Table(
            ["test #", "true", "predicted", "probability", "file"],
            [[m.index, m.true, m.predicted, f"{m.confidence:.4f}", m.source or ""] for m in self.mistakes[:top]],
        )

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        return {
            "task": "multi_label" if self.multi_label else "single_label",
            "samples": self.samples,
            "wrong": len(self.mistakes),
            "accuracy": self.accuracy,
            "most_confident_mistakes": [vars(m) for m in self.mistakes[:top]],
            "confused_pairs": [{"true": t, "predicted": p, "count": n} for t, p, n in self.confused_pairs],
            "class_accuracy": [{"class": c, "accuracy": a, "support": n} for c, a, n in self.class_accuracy],
        }


def analyse_errors(predictions: SplitPredictions, classes: list[str]) -> ErrorAnalysis:
    if predictions.multi_label:
        return analyse_multilabel_errors(predictions, classes)
    labels, predicted, confidence = predictions.labels, predictions.predicted, predictions.confidence
    wrong = torch.nonzero(predicted != labels).flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True, stable=True)]
    sources = predictions.sources
    mistakes = [
        Mistake(i, classes[labels[i]], classes[predicted[i]], confidence[i].item(), sources[i] if sources else None)
        for i in wrong.tolist()
    ]

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


def _names(row: torch.Tensor, classes: list[str]) -> list[str]:
    return [classes[c] for c in torch.nonzero(row).flatten().tolist()]


def analyse_multilabel_errors(predictions: SplitPredictions, classes: list[str]) -> ErrorAnalysis:
    """Images with a label missed or added, the worst first (the farthest a probability fell on the wrong side
    of its threshold); per label, how often it is missed and how often added; per label, the share of images
    where its decision is right."""
    assert predictions.probs is not None
    truth, predicted = predictions.labels.round().bool(), predictions.predicted.bool()
    gap = predictions.miss_gap
    wrong = torch.nonzero((truth != predicted).any(1)).flatten()
    wrong = wrong[gap[wrong].argsort(descending=True, stable=True)]
    sources = predictions.sources
    mistakes = [
        Mistake(
            i,
            ";".join(_names(truth[i], classes)),
            ";".join(_names(predicted[i], classes)),
            gap[i].item(),
            sources[i] if sources else None,
            _names(truth[i] & ~predicted[i], classes),
            _names(predicted[i] & ~truth[i], classes),
        )
        for i in wrong.tolist()
    ]
    missed, spurious = (truth & ~predicted).sum(0), (predicted & ~truth).sum(0)
    counted = [(classes[c], "missed", int(missed[c])) for c in range(len(classes))]
    counted += [(classes[c], "spurious", int(spurious[c])) for c in range(len(classes))]
    confused = sorted((p for p in counted if p[2] > 0), key=lambda p: -p[2])
    right = (truth == predicted).double().mean(0)
    support = truth.sum(0)
    ranked = sorted(range(len(classes)), key=lambda c: (right[c].item(), classes[c]))
    per_class = [(classes[c], right[c].item(), int(support[c])) for c in ranked]
    return ErrorAnalysis(mistakes, confused, per_class, len(truth), multi_label=True)


# ---------------------------------------------------------------- a run's errors, written


@dataclass
class ErrorsResult:
    analysis: ErrorAnalysis
    paths: dict[str, Path] = field(default_factory=dict)


def test_image_name(predictions: SplitPredictions, index: int) -> str:
    """A test image as the user knows it: its file name for folders and CSVs, else its test index."""
    return Path(predictions.sources[index]).name[:20] if predictions.sources else f"#{index}"


def _plot_mistakes(analysis: ErrorAnalysis, predictions: SplitPredictions, top: int, path: Path) -> bool:
    """The most confident mistakes whose images the run kept, as a grid; False if there are none."""
    position = {int(i): k for k, i in enumerate(predictions.example_index.tolist())}
    shown = [m for m in analysis.mistakes[:top] if m.index in position]
    if not shown:
        return False
    images = predictions.example_images[[position[m.index] for m in shown]]
    multi = predictions.multi_label
    titles = [
        f"{test_image_name(predictions, m.index)}\nmissed {';'.join(m.missed or [])[:22] or '-'}\n"
        f"spurious {';'.join(m.spurious or [])[:20] or '-'}"
        if multi
        else f"{test_image_name(predictions, m.index)} true {m.true}\npred {m.predicted} {m.confidence:.2f}"
        for m in shown
    ]
    what = "worst mistakes (labels missed, labels spurious)" if multi else "most confident mistakes"
    plot_image_grid(images, titles, path, ["red"] * len(shown), f"the {len(shown)} {what} on the test set")
    return True


def write_errors(
    predictions: SplitPredictions, classes: list[str], top: int, folder: Path, log: Callable[[str], None]
) -> ErrorsResult:
    """Analyse saved test predictions; errors.json and the mistakes grid to ``folder``, the tables to ``log``."""
    analysis = analyse_errors(predictions, classes)
    result = ErrorsResult(analysis, {"json": folder / "errors.json"})
    if _plot_mistakes(analysis, predictions, top, folder / "mistakes.png"):
        result.paths["mistakes"] = folder / "mistakes.png"
    atomic_write_json(result.paths["json"], analysis.to_dict(top))
    if analysis.multi_label:
        log(
            f"{len(analysis.mistakes)} of {analysis.samples} test images with a label missed or spurious (subset "
            f"accuracy {analysis.accuracy:.4f})"
        )
    else:
        log(f"{len(analysis.mistakes)} wrong of {analysis.samples} test images (accuracy {analysis.accuracy:.4f})")
    log("\nper-class accuracy, worst first:\n" + analysis.class_accuracy_table().to_text())
    if analysis.confused_pairs:
        which = "labels most often missed or spurious" if analysis.multi_label else "most confused pairs"
        log(f"\n{which}:\n" + analysis.confused_pairs_table().to_text())
        log(
            f"\nthe {min(top, len(analysis.mistakes))} most confident mistakes:\n"
            + analysis.mistakes_table(top).to_text()
        )
    log(f"\nwritten: {', '.join(str(p) for p in result.paths.values())}")
    return result
