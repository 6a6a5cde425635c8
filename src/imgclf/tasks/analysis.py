"""Where a model is wrong, as a task analyses it (:meth:`~imgclf.tasks.base.Task.analyse_errors`): its
mistakes worst first, the confusions it makes most often, and how right it is per class. One label per image:
confident mistakes and confused class pairs; several: the labels missed and the ones added (spurious). The
analysis renders itself (tables, titles, JSON): ``imgclf errors`` and the report show it as it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..plots.tables import Table


@dataclass(frozen=True)
class Mistake:
    index: int  # position in the test split
    true: str
    predicted: str
    confidence: float  # probability of the predicted class (several labels: the largest miss of a threshold)
    source: str | None = None  # the image file, for folder and CSV data
    missed: list[str] | None = None  # several labels: true labels not predicted
    spurious: list[str] | None = None  # several labels: labels predicted that are not true


@dataclass
class ErrorAnalysis:
    """One label per image: ``confused_pairs`` are (true, predicted as, count)."""

    task: ClassVar[str] = "single_label"
    wrong_words: ClassVar[str] = ""  # after "N wrong of M test images"
    pairs_title: ClassVar[str] = "most confused pairs"
    pairs_caption: ClassVar[str] = "Most confused pairs (true class, predicted as, count):"
    mistakes_caption: ClassVar[str] = "the most confident mistakes: true class, prediction and its probability"
    grid_words: ClassVar[str] = "most confident mistakes"

    mistakes: list[Mistake]  # every wrong prediction, worst first
    confused_pairs: list[tuple[str, str, int]]  # most frequent first
    class_accuracy: list[tuple[str, float, int]]  # (class, accuracy, test images), worst first
    samples: int

    @property
    def accuracy(self) -> float:
        return 1 - len(self.mistakes) / max(self.samples, 1)

    def summary(self) -> str:
        return f"{len(self.mistakes)} wrong of {self.samples} test images (accuracy {self.accuracy:.4f})"

    def class_accuracy_table(self) -> Table:
        return Table(["class", "accuracy", "images"], [[c, f"{a:.4f}", n] for c, a, n in self.class_accuracy])

    def confused_pairs_table(self, top: int = 10) -> Table:
        return Table(["true", "predicted as", "count"], [list(p) for p in self.confused_pairs[:top]])

    def mistakes_table(self, top: int) -> Table:
        return Table(
            ["test #", "true", "predicted", "probability", "file"],
            [[m.index, m.true, m.predicted, f"{m.confidence:.4f}", m.source or ""] for m in self.mistakes[:top]],
        )

    def grid_title(self, mistake: Mistake, name: str) -> str:
        """A mistake's title in the grid of mistakes (``name``: the image as the user knows it)."""
        return f"{name} true {mistake.true}\npred {mistake.predicted} {mistake.confidence:.2f}"

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        return {
            "task": self.task,
            "samples": self.samples,
            "wrong": len(self.mistakes),
            "accuracy": self.accuracy,
            "most_confident_mistakes": [vars(m) for m in self.mistakes[:top]],
            "confused_pairs": [{"true": t, "predicted": p, "count": n} for t, p, n in self.confused_pairs],
            "class_accuracy": [{"class": c, "accuracy": a, "support": n} for c, a, n in self.class_accuracy],
        }


@dataclass
class LabelErrorAnalysis(ErrorAnalysis):
    """Several labels per image: ``confused_pairs`` are (label, "missed" or "spurious", images); a mistake is
    any label missed or spurious, and its ``confidence`` the farthest a probability fell on the wrong side."""

    task: ClassVar[str] = "multi_label"
    wrong_words: ClassVar[str] = " (any label missed or spurious)"
    pairs_title: ClassVar[str] = "labels most often missed or spurious"
    pairs_caption: ClassVar[str] = (
        "Labels most often missed (a true label under its threshold) or spurious (a false one over it):"
    )
    mistakes_caption: ClassVar[str] = "the worst mistakes: the labels missed and the spurious ones"
    grid_words: ClassVar[str] = "worst mistakes (labels missed, labels spurious)"

    def summary(self) -> str:
        return (
            f"{len(self.mistakes)} of {self.samples} test images with a label missed or spurious (subset accuracy "
            f"{self.accuracy:.4f})"
        )

    def class_accuracy_table(self) -> Table:
        return Table(
            ["label", "decided right", "images with it"], [[c, f"{a:.4f}", n] for c, a, n in self.class_accuracy]
        )

    def confused_pairs_table(self, top: int = 10) -> Table:
        return Table(["label", "missed or spurious", "images"], [list(p) for p in self.confused_pairs[:top]])

    def mistakes_table(self, top: int) -> Table:
        return Table(
            ["test #", "true", "predicted", "missed", "spurious", "file"],
            [
                [m.index, m.true, m.predicted, ";".join(m.missed or []), ";".join(m.spurious or []), m.source or ""]
                for m in self.mistakes[:top]
            ],
        )

    def grid_title(self, mistake: Mistake, name: str) -> str:
        return f"{name}\nmissed {';'.join(mistake.missed or [])[:22] or '-'}\nspurious {';'.join(mistake.spurious or [])[:20] or '-'}"
