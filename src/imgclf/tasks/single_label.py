"""One class per image: a softmax over the classes, cross-entropy (or focal), the most probable class decides,
a temperature fitted on the validation split calibrates, and `unknown` below a minimum confidence."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import rundir
from .analysis import ErrorAnalysis, Mistake
from .base import UNKNOWN, Fitted, Prediction, Task, Tested, register_task, without_tta

if TYPE_CHECKING:
    from ..plots.tables import Table
    from ..rundir import SplitPredictions


def coverage_table(rows: list[dict[str, Any]]) -> Table:
    """At each minimum confidence: the share of images answered and their accuracy."""
    from ..plots.tables import Table

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


@register_task
class SingleLabel(Task):
    """One class per image: softmax over the classes, cross-entropy (or focal), the most probable class decides."""

    name = "single_label"
    activation = "softmax"
    accuracy_name = "accuracy"
    unsupported = {
        "threshold": "`threshold` is for runs with several labels per image; this run predicts one (use "
        "`min_confidence`)",
    }

    # ------------------------------------------------------------ labels

    def class_counts(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        return torch.bincount(labels, minlength=num_classes)

    def hold_out(self, labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..data.splits import stratified_split

        return stratified_split(labels, fraction, seed)

    def label_names(self, labels: torch.Tensor, classes: Sequence[str]) -> list[str]:
        return [classes[i] for i in labels.tolist()]

    # ------------------------------------------------------------ training

    def soft_targets(self, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        return targets.float() if targets.dim() == 2 else nn.functional.one_hot(targets, num_classes).float()

    def summed_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), targets, reduction="sum")

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hard = targets.argmax(1) if targets.dim() == 2 else targets  # mixed: the larger share's class
        return (logits.argmax(1) == hard).sum()

    def class_hits(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        right = targets[logits.argmax(1) == targets]
        return torch.stack([right.bincount(minlength=num_classes), targets.bincount(minlength=num_classes)])

    # ------------------------------------------------------------ after the logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1)

    def decide(self, probs: torch.Tensor, thresholds: Sequence[float] | None) -> torch.Tensor:
        return probs.argmax(1)

    def wrong(self, decided: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return decided != labels

    def decided(self, predictions: SplitPredictions) -> torch.Tensor:
        return predictions.top_index[:, 0]

    def severity(self, predictions: SplitPredictions) -> torch.Tensor:
        return predictions.top_prob[:, 0]  # the most confident mistakes first

    def fit_on_validation(self, probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> Fitted:
        """Temperature scaling: the temperature that best fits the validation labels (Guo et al. 2017), kept
        only where it holds out better (fitted on some folds of the validation split, scored on the others),
        and none where too few validation mistakes make it meaningless."""
        from ..metrics import calibration_note, fit_temperature, temperature_held_out

        note = calibration_note(probs, labels)
        if note is None:
            before, after = temperature_held_out(probs, labels)
            if after >= before:
                note = (
                    f"not calibrated: a temperature fitted on part of the validation split scored worse on the rest "
                    f"(log loss {after:.4f} against {before:.4f} without): it would fit noise"
                )
        if note is not None:
            return Fitted({}, {"temperature": 1.0, "note": note}, [note])
        temperature = fit_temperature(probs, labels)
        return Fitted({"temperature": temperature}, {"temperature": temperature, "note": None})

    def metrics(
        self, probs: torch.Tensor, labels: torch.Tensor, classes: list[str], thresholds: Sequence[float] | None = None
    ) -> dict[str, Any]:
        from ..metrics import compute_metrics

        return compute_metrics(probs, labels, classes)

    def headline(self, metrics: dict[str, Any]) -> str:
        balanced = metrics.get("balanced_accuracy")  # runs before imgclf 0.3 lack it
        shown = f", balanced accuracy {balanced:.4f}" if balanced is not None else ""
        return f"accuracy {metrics['accuracy']:.4f}{shown}, macro F1 {metrics['macro_f1']:.4f}"

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        rows = [
            ["test accuracy", f"{metrics['accuracy']:.4f}{without_tta(metrics)}"],
            ["macro F1", f"{metrics['macro_f1']:.4f}"],
        ]
        if "balanced_accuracy" in metrics:  # runs before imgclf 0.3 lack it
            rows.append(["balanced accuracy", f"{metrics['balanced_accuracy']:.4f}"])
        return rows

    def per_class_table(self, metrics: dict[str, Any]) -> Table:
        """Precision, recall, F1 and support per class, then accuracy, macro F1 and balanced accuracy."""
        from ..plots.tables import Table

        rows: list[list[Any]] = [
            [name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]]
            for name, m in metrics["per_class"].items()
        ]
        rows.append(["accuracy", "", "", f"{metrics['accuracy']:.4f}", metrics["samples"]])
        rows.append(["macro f1", "", "", f"{metrics['macro_f1']:.4f}", ""])
        if "balanced_accuracy" in metrics:  # runs before imgclf 0.3 lack it
            rows.append(["balanced accuracy", "", "", f"{metrics['balanced_accuracy']:.4f}", ""])
        return Table(["class", "precision", "recall", "f1", "support"], rows)

    def evaluation_lines(self, metrics: dict[str, Any], temperature: float, threshold: float | None) -> list[str]:
        return [
            f"expected calibration error {metrics['calibration_error']:.4f} (temperature {temperature:.3f})",
            "coverage: how many answers `min_confidence` leaves (the rest are `unknown`), and how many of them are right",
            coverage_table(metrics["coverage"]).to_text(),
        ]

    # ------------------------------------------------------------ answers

    def decisions(
        self, probs: torch.Tensor, classes: Sequence[str], thresholds: Sequence[float] | None, sure: torch.Tensor
    ) -> list[tuple[str, list[tuple[str, float]] | None]]:
        """The most probable class, or `unknown` where the score did not reach the minimum confidence."""
        return [(classes[c] if keep else UNKNOWN, None) for c, keep in zip(probs.argmax(1).tolist(), sure.tolist())]

    def decision_columns(self, min_confidence: float) -> list[str]:
        """`prediction` (a class, or `unknown`) where a minimum confidence can make it differ from label_1."""
        return ["prediction"] if min_confidence > 0 else []

    def decision_cells(self, prediction: Prediction, min_confidence: float) -> list[str]:
        return [prediction.label] if min_confidence > 0 else []

    def analyse_errors(self, predictions: SplitPredictions, classes: list[str]) -> ErrorAnalysis:
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

    def export_metadata(self, thresholds: Sequence[float] | None) -> dict[str, Any]:
        return {"activation": "softmax", "decision": "the most probable class", "thresholds": None}

    # ------------------------------------------------------------ after the test split

    def test_figures(self, tested: Tested) -> None:
        """The confusion matrix, a sample of predictions, and the reliability diagram before and after the
        temperature (whose test calibration errors complete ``fitted.record``)."""
        run_path, split, test, probs = tested.run_path, tested.split, tested.metrics, tested.probs
        fitted, seed, classes = tested.fitted, tested.seed, tested.classes
        from ..metrics import apply_temperature, calibration_error, reliability
        from ..plots.figures import plot_confusion_matrix, plot_predictions, plot_reliability

        plot_confusion_matrix(test["confusion_matrix"], classes, run_path / rundir.CONFUSION_MATRIX)
        wrong = torch.nonzero(probs.argmax(1) != split.labels).flatten()  # up to 32, half mistakes where there are
        right = torch.nonzero(probs.argmax(1) == split.labels).flatten()
        generator = torch.Generator().manual_seed(seed)
        wrong = wrong[torch.randperm(len(wrong), generator=generator)][:16]
        right = right[torch.randperm(len(right), generator=generator)][: 32 - len(wrong)]
        index = torch.cat([wrong, right]).sort().values
        plot_predictions(
            split.images[index], probs[index], split.labels[index], classes, run_path / rundir.PREDICTIONS_PLOT
        )
        temperature = fitted.record.get("temperature", 1.0)
        uncalibrated = apply_temperature(probs, 1 / temperature)  # softmax(T log p): the probabilities before it
        ece_before = calibration_error(uncalibrated, split.labels)
        plot_reliability(
            reliability(uncalibrated, split.labels),
            reliability(probs, split.labels),
            (ece_before, test["calibration_error"]),
            run_path / rundir.RELIABILITY,
        )
        # temperature scaling, fitted on the validation split; ECE on the test split; the note says why T
        # stayed 1 where it did
        fitted.record = {
            "temperature": temperature,
            "test_ece_before": ece_before,
            "test_ece_after": test["calibration_error"],
            "note": fitted.record.get("note"),
        }

    def report_sections(self, page: Any, metrics: Any, run_path: Path) -> None:
        test, calibration = metrics.test, metrics.calibration
        page.section("Test metrics")
        page.table(self.per_class_table(test))
        page.figure(
            run_path / rundir.CONFUSION_MATRIX, "confusion matrix: rows are the true classes, columns the predictions"
        )
        page.figure(run_path / rundir.PER_CLASS, "precision, recall and F1 per class")
        page.figure(run_path / rundir.PREDICTIONS_PLOT, "a sample of test predictions (mistakes in red)")
        page.section("Confidence")
        if calibration and calibration.get("note"):
            page.text(f"Temperature scaling: {calibration['note']}.")
        elif calibration:  # runs before calibration have none
            page.text(
                f"Temperature scaling fitted on the validation split: T = {calibration['temperature']:.3f}. "
                f"Expected calibration error on the test split {calibration['test_ece_before']:.4f} before, "
                f"{calibration['test_ece_after']:.4f} after; predict, serve, explain and export apply it."
            )
        if "coverage" in test:
            page.text(
                "With `--min-confidence P`, predictions below P answer `unknown`: the share still answered and "
                "their accuracy, on the test split."
            )
            page.table(coverage_table(test["coverage"]))
        if calibration:
            page.figure(
                run_path / rundir.RELIABILITY, "reliability: accuracy per confidence bin, before and after calibration"
            )
