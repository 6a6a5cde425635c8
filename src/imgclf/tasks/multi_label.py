"""Any number of classes per image (none too): a sigmoid per class, binary cross-entropy (or focal); each class
is predicted where its probability reaches its own threshold, chosen on the validation split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import rundir
from .analysis import LabelErrorAnalysis, Mistake
from .base import LABEL_SEPARATOR, Fitted, Prediction, Task, Tested, register_task, without_tta

if TYPE_CHECKING:
    from ..plots.tables import Table
    from ..rundir import SplitPredictions

NOT_CALIBRATED = (
    "not applied: several labels per image are decided by per-class thresholds chosen on the validation split "
    "(each label's best F1), which is what a probability is compared with; the probabilities are the sigmoid's"
)


@register_task
class MultiLabel(Task):
    """Any number of classes per image (none too): a sigmoid per class, binary cross-entropy (or focal); each
    class is predicted where its probability reaches its own threshold, chosen on the validation split."""

    name = "multi_label"
    activation = "sigmoid"
    accuracy_name = "subset accuracy"  # every label of an image right
    DECIDE_AT = 0.5  # during training (accuracy per epoch) and before the run's own thresholds are chosen
    unsupported = {
        "min_confidence": "`min_confidence` is for runs with one label per image; a multi-label run predicts each "
        "label over its own threshold (set one for all with `threshold`)",
        "negatives": "`negatives` measures `unknown`, an answer of one-label runs; a multi-label run answers an "
        "unrelated image with no label over its threshold",
        "learning_curve": "the learning curve is measured for one label per image (a probe's accuracy); this data "
        "has several per image",
        "sampler_balanced": "`sampler=balanced` draws each image by its class; with several labels per image use "
        "`class_weights`",
        "pack": "packing images with several labels each is not supported; train from the CSV itself",
        "search": "search: for one label per image only; several labels train the cnn's recipe (or set `model`)",
        "label_check": "label check: not run: it is single-label only (confident learning ranks one given class per "
        "image against the others); this data has several labels per image. Duplicates, leaks and odd files are "
        "checked, with each image's label set as its class",
    }
    # the recipes' label smoothing is for a softmax: with a sigmoid per class, 0.2 caps each probability at 0.9
    recipe_rules = {"label_smoothing": (0.0, "rule: several labels per image (the recipes' smoothing is for one)")}
    imbalance_rule = False  # the treatment was measured with one label per image (bench/imbalance.py)

    # ------------------------------------------------------------ labels

    def class_counts(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        return labels.round().long().sum(0)

    def hold_out(self, labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..data.splits import iterative_split

        return iterative_split(labels, fraction, seed)

    def label_names(self, labels: torch.Tensor, classes: Sequence[str]) -> list[str]:
        return [
            LABEL_SEPARATOR.join(classes[c] for c in torch.nonzero(row).flatten().tolist()) or "-"
            for row in labels.round()
        ]

    def as_one_class(self, labels: torch.Tensor, classes: list[str]) -> tuple[torch.Tensor, list[str]]:
        """Each image's label set as its class (``a;b``, or ``-`` for none)."""
        sets = self.label_names(labels, classes)
        found = sorted(set(sets))
        return torch.tensor([found.index(s) for s in sets], dtype=torch.long), found

    def imbalance_note(self, counts: Sequence[int], cfg: Any) -> str:
        return (
            f"labels of unequal frequency (largest {max(counts)}, smallest {min(counts)} images): each class's "
            "threshold is chosen on validation; `class_weights` weighs the loss by class (not measured here)"
        )

    # ------------------------------------------------------------ training

    def soft_targets(self, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        return targets.float()

    def summed_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per image, the mean over its labels of the binary cross-entropy; summed over the batch."""
        per_pair = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
        return per_pair.mean(1).sum()

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Images with every label right (subset accuracy) at probability 0.5."""
        return ((logits >= 0) == (targets >= 0.5)).all(1).sum()

    def class_hits(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Per class, its images found at 0.5 and its images: the mean of the classes' recalls."""
        positive = targets >= 0.5
        return torch.stack([(positive & (logits >= 0)).sum(0), positive.sum(0)]).long()

    # ------------------------------------------------------------ after the logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def default_thresholds(self, num_classes: int) -> list[float] | None:
        return [self.DECIDE_AT] * num_classes

    def _cut(self, probs: torch.Tensor, thresholds: Sequence[float] | None) -> torch.Tensor:
        """The thresholds as a 1 x classes row (0.5 where none were fitted)."""
        chosen = thresholds if thresholds is not None else self.default_thresholds(probs.shape[1])
        return torch.as_tensor(chosen, dtype=probs.dtype).view(1, -1)

    def decide(self, probs: torch.Tensor, thresholds: Sequence[float] | None) -> torch.Tensor:
        return (probs >= self._cut(probs, thresholds)).float()

    def wrong(self, decided: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (decided != labels.round()).any(1)

    def decided(self, predictions: SplitPredictions) -> torch.Tensor:
        assert predictions.probs is not None  # kept: kept_probabilities
        return self.decide(predictions.probs, predictions.thresholds)

    def severity(self, predictions: SplitPredictions) -> torch.Tensor:
        """The farthest a probability fell on the wrong side of its threshold (0: every label right)."""
        assert predictions.probs is not None
        cut = self._cut(predictions.probs, predictions.thresholds)
        return ((predictions.probs - cut).abs() * (self.decided(predictions) != predictions.labels.round())).amax(1)

    def kept_probabilities(self, probs: torch.Tensor) -> torch.Tensor | None:
        return probs.float().clone()  # each label is decided from its own probability

    def fit_on_validation(self, probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> Fitted:
        """Each class's threshold, the one with the best F1 on the validation split."""
        from ..metrics import best_thresholds

        thresholds, how = best_thresholds(probs, labels)
        shown = ", ".join(f"{name} {t:g}" for name, t in zip(classes[:20], thresholds))
        return Fitted(
            {"thresholds": thresholds},
            {"temperature": 1.0, "note": NOT_CALIBRATED},
            [f"per-class thresholds (best validation F1): {shown}" + (" ..." if len(thresholds) > 20 else "")],
            {name: {"threshold_chosen": chosen} for name, chosen in zip(classes, how)},
        )

    def metrics(
        self, probs: torch.Tensor, labels: torch.Tensor, classes: list[str], thresholds: Sequence[float] | None = None
    ) -> dict[str, Any]:
        from ..metrics import multilabel_metrics

        return multilabel_metrics(
            probs, labels, classes, list(thresholds or self.default_thresholds(len(classes)) or [])
        )

    def headline(self, metrics: dict[str, Any]) -> str:
        return (
            f"subset accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, micro F1 "
            f"{metrics['micro_f1']:.4f}, mAP {metrics['mAP']:.4f}, Hamming loss {metrics['hamming_loss']:.4f}"
        )

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        return [
            ["test subset accuracy", f"{metrics['accuracy']:.4f}{without_tta(metrics)}"],
            ["macro F1", f"{metrics['macro_f1']:.4f}"],
            ["mAP", f"{metrics['mAP']:.4f}"],
            ["micro F1", f"{metrics['micro_f1']:.4f}"],
            ["balanced accuracy", f"{metrics['balanced_accuracy']:.4f}"],
        ]

    def per_class_table(self, metrics: dict[str, Any]) -> Table:
        """Per class: precision, recall, F1, average precision and threshold; then subset accuracy, macro and
        micro F1, mAP and the Hamming loss."""
        from ..plots.tables import Table

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

    def evaluation_lines(self, metrics: dict[str, Any], temperature: float, threshold: float | None) -> list[str]:
        return [f"thresholds: {'the run`s own, chosen on validation' if threshold is None else threshold}"]

    # ------------------------------------------------------------ answers

    def decisions(
        self, probs: torch.Tensor, classes: Sequence[str], thresholds: Sequence[float] | None, sure: torch.Tensor
    ) -> list[tuple[str, list[tuple[str, float]] | None]]:
        """Every class at or over its threshold, most probable first; `unknown` is not an answer here."""
        found: list[tuple[str, list[tuple[str, float]] | None]] = []
        for row, over in zip(probs.tolist(), self.decide(probs, thresholds).bool().tolist()):
            labels = sorted(((classes[c], p) for c, (p, o) in enumerate(zip(row, over)) if o), key=lambda x: -x[1])
            found.append((LABEL_SEPARATOR.join(name for name, _ in labels), labels))
        return found

    def decision_columns(self, min_confidence: float) -> list[str]:
        """The labels over their thresholds and their probabilities, each `;`-separated, in the same order."""
        return ["labels", "probabilities"]

    def decision_cells(self, prediction: Prediction, min_confidence: float) -> list[str]:
        return [prediction.label, LABEL_SEPARATOR.join(f"{p:.4f}" for _, p in prediction.labels or [])]

    def explained_targets(
        self, probs: torch.Tensor, thresholds: Sequence[float] | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A map per label over its threshold (an image with none: its most probable label)."""
        over = self.decide(probs, thresholds).bool()
        none = torch.nonzero(over.sum(1) == 0).flatten()
        over[none, probs[none].argmax(1)] = True
        rows, targets = torch.nonzero(over, as_tuple=True)
        return rows, targets

    def analyse_errors(self, predictions: SplitPredictions, classes: list[str]) -> LabelErrorAnalysis:
        """Images with a label missed or added, the worst first (the farthest a probability fell on the wrong
        side of its threshold); per label, how often it is missed and how often added, and the share of images
        where its decision is right."""
        truth, predicted = predictions.labels.round().bool(), predictions.predicted.bool()
        gap = predictions.severity
        wrong = torch.nonzero((truth != predicted).any(1)).flatten()
        wrong = wrong[gap[wrong].argsort(descending=True, stable=True)]
        sources = predictions.sources

        def names(row: torch.Tensor) -> list[str]:
            return [classes[c] for c in torch.nonzero(row).flatten().tolist()]

        mistakes = [
            Mistake(
                i,
                LABEL_SEPARATOR.join(names(truth[i])),
                LABEL_SEPARATOR.join(names(predicted[i])),
                gap[i].item(),
                sources[i] if sources else None,
                names(truth[i] & ~predicted[i]),
                names(predicted[i] & ~truth[i]),
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
        return LabelErrorAnalysis(mistakes, confused, per_class, len(truth))

    def export_metadata(self, thresholds: Sequence[float] | None) -> dict[str, Any]:
        return {
            "activation": "sigmoid",
            "decision": "every class with probability >= its threshold",
            "thresholds": list(thresholds) if thresholds is not None else None,
        }

    # ------------------------------------------------------------ after the test split

    def test_figures(self, tested: Tested) -> None:
        """The kept test images (the worst mistakes first, then some right), each with its predicted and true
        labels."""
        predictions, classes, run_path = tested.predictions, tested.classes, tested.run_path
        from ..plots.figures import plot_image_grid

        index = predictions.example_index[:32]
        predicted = self.label_names(predictions.predicted[index], classes)
        truth = self.label_names(predictions.labels[index], classes)
        wrong = predictions.wrong[index].tolist()
        titles = [f"{p[:24]}\n(true {t[:20]})" for p, t in zip(predicted, truth)]
        plot_image_grid(
            predictions.example_images[:32],
            titles,
            run_path / rundir.PREDICTIONS_PLOT,
            ["red" if w else "black" for w in wrong],
            "test predictions: labels over their thresholds (true labels); any label wrong in red",
        )

    def report_sections(self, page: Any, metrics: Any, run_path: Path) -> None:
        test, calibration = metrics.test, metrics.calibration
        page.section("Test metrics")
        page.text(
            f"Several labels per image ({test['labels_per_image']:.2f} on average in the test split): each class is "
            "predicted where its probability reaches its threshold, chosen on the validation split for the best F1. "
            "Subset accuracy counts an image right when all its labels are; the Hamming loss is the share of wrong "
            "image-label decisions; mAP (threshold-free) is the mean of the classes' average precision."
        )
        page.table(self.per_class_table(test))
        page.figure(run_path / rundir.PER_CLASS, "precision, recall and F1 per class")
        page.figure(run_path / rundir.PREDICTIONS_PLOT, "a sample of test predictions (mistakes in red)")
        page.section("Confidence")
        page.text(f"Calibration: {calibration['note'] if calibration else 'not applied'}.")
