"""One self-contained HTML page of a run, built from its run directory alone: summary, curves, metrics,
errors, Grad-CAM explanations of test images and the model layer by layer."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import rundir
from ..evaluate import coverage_table, per_class_table, test_predictions, unknown_table
from ..explain import (
    ERRORS_TOP,
    ErrorsResult,
    InspectResult,
    explain_batch,
    inspect_classifier,
    plot_explanation_pages,
    spatial_layers,
    test_image_name,
    write_errors,
)
from ..plots.html import HtmlReport
from ..plots.tables import Table
from ..predict import Classifier, load
from ..rundir import RunDir, SplitPredictions
from ..runtime import quiet
from ..tasks import label_names

REPORT_RIGHT, REPORT_WRONG = 6, 6  # test images explained in the report


def _examples(predictions: SplitPredictions, classes: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Stored test images to explain, the most confident mistakes first then some right answers, with labels."""
    index = predictions.example_index
    wrong = predictions.wrong[index]
    picked = torch.cat([torch.nonzero(wrong).flatten()[:REPORT_WRONG], torch.nonzero(~wrong).flatten()[:REPORT_RIGHT]])
    truth = label_names(predictions.labels[index], classes)
    labels = [
        f"{test_image_name(predictions, int(index[k]))} {'wrong' if wrong[k] else 'right'} (true {truth[k]})"
        for k in picked.tolist()
    ]
    return predictions.example_images[picked], labels


def _explanations(
    classifier: Classifier, images: torch.Tensor, labels: list[str], folder: Path
) -> tuple[Path | None, str]:
    if not len(images):
        return None, ""
    method = "gradcam" if spatial_layers(classifier.model, classifier.normalise(images[:1])) else "saliency"
    explanations = explain_batch(classifier, images, method, per_label=False)
    return plot_explanation_pages(images, labels, explanations, classifier.classes, folder, f"report-{method}")[
        0
    ], method


def _section_metrics(page: HtmlReport, metrics: dict[str, Any], run: RunDir) -> None:
    page.section("Test metrics")
    test = metrics["test"]
    if test.get("task") == "multi_label":
        page.text(
            f"Several labels per image ({test['labels_per_image']:.2f} on average in the test split): each class is "
            "predicted where its probability reaches its threshold, chosen on the validation split for the best F1. "
            "Subset accuracy counts an image right when all its labels are; the Hamming loss is the share of wrong "
            "image-label decisions; mAP (threshold-free) is the mean of the classes' average precision."
        )
    page.table(per_class_table(test))
    if test.get("task") != "multi_label":
        page.figure(
            run / rundir.CONFUSION_MATRIX, "confusion matrix: rows are the true classes, columns the predictions"
        )
    page.figure(run / rundir.PER_CLASS, "precision, recall and F1 per class")
    page.figure(run / rundir.PREDICTIONS_PLOT, "a sample of test predictions (mistakes in red)")
    _section_confidence(page, metrics)
    if "calibration" in metrics and test.get("task") != "multi_label":  # multi-label: not calibrated, said above
        page.figure(run / rundir.RELIABILITY, "reliability: accuracy per confidence bin, before and after calibration")


def _section_confidence(page: HtmlReport, metrics: dict[str, Any]) -> None:
    """Calibration and coverage: how far the probabilities can be believed, and what `min_confidence` costs."""
    page.section("Confidence")
    calibration = metrics.get("calibration")
    if metrics.get("task") == "multi_label":
        page.text(f"Calibration: {calibration['note'] if calibration else 'not applied'}.")
    elif calibration and calibration.get("note"):
        page.text(f"Temperature scaling: {calibration['note']}.")
    elif calibration:  # runs before calibration have none
        page.text(
            f"Temperature scaling fitted on the validation split: T = {calibration['temperature']:.3f}. "
            f"Expected calibration error on the test split {calibration['test_ece_before']:.4f} before, "
            f"{calibration['test_ece_after']:.4f} after; predict, serve, explain and export apply it."
        )
    if "coverage" in metrics["test"]:
        page.text(
            "With `--min-confidence P`, predictions below P answer `unknown`: the share still answered and "
            "their accuracy, on the test split."
        )
        page.table(coverage_table(metrics["test"]["coverage"]))


def _section_unknown(page: HtmlReport, unknown: dict[str, Any], run: RunDir) -> None:
    """How well `unknown` turns away images of none of the classes (evaluate --negatives)."""
    at = {
        name: min(rows, key=lambda r: abs(r["coverage"] - unknown["chosen_at_coverage"]))
        for name, rows in unknown["curves"].items()
    }
    page.section("None of these")
    page.text(
        f"Measured on {unknown['unrelated_images']:,} images of none of the classes ({unknown['negatives']}) against "
        f"the {unknown['real_images']:,} test images. Keeping {unknown['chosen_at_coverage']:.0%} of the real ones, "
        + ", ".join(f"{name} accepts {row['unrelated_accepted']:.1%} of the unrelated" for name, row in at.items())
        + f"; `--min-confidence` reads {unknown['chosen']} for this run (familiarity: the share of real images "
        "farther from the training images' embeddings)."
    )
    page.table(unknown_table(unknown))
    page.figure(run / rundir.UNKNOWN_PLOT, "unrelated images accepted per share of real images kept, per score")


def _section_errors(page: HtmlReport, result: ErrorsResult) -> None:
    analysis = result.analysis
    page.section("Errors")
    every = " (any label missed or spurious)" if analysis.multi_label else ""
    page.text(f"{len(analysis.mistakes)} wrong of {analysis.samples} test images{every}.")
    page.table(analysis.class_accuracy_table())
    if analysis.confused_pairs and analysis.multi_label:
        page.text("Labels most often missed (a true label under its threshold) or spurious (a false one over it):")
        page.table(analysis.confused_pairs_table())
    elif analysis.confused_pairs:
        page.text("Most confused pairs (true class, predicted as, count):")
        page.table(analysis.confused_pairs_table())
    if "mistakes" in result.paths:
        caption = (
            "the worst mistakes: the labels missed and the spurious ones"
            if analysis.multi_label
            else "the most confident mistakes: true class, prediction and its probability"
        )
        page.figure(result.paths["mistakes"], caption)


def _section_search(page: HtmlReport, search: dict[str, Any]) -> None:
    """What the folder default tried on the validation split, and why it chose (search.json)."""
    page.section("How the model was chosen")
    page.text(
        f"With no model given, imgclf tried these on the validation split ({search['metric']}) within a budget of "
        f"{search['budget_seconds']:.0f} s, and chose {search['chosen']} at {search['image_size']} px: {search['reason']}."
    )
    page.table(
        Table(
            ["candidate", "px", f"validation {search['metric']}", "seconds", "how"],
            [
                [t["candidate"], str(t["image_size"]), f"{t['score']:.4f}", f"{t['seconds']:.1f}", t["how"]]
                for t in search["trials"]
            ],
        )
    )


def _section_model(page: HtmlReport, result: InspectResult) -> None:
    page.section("Inside the model")
    page.text(result.weight_sharing_summary())
    page.table(result.layer_table())
    for key, caption in (
        ("kernels", "the first layer's kernels"),
        ("feature_maps", "feature maps of one test image after each block and pooling"),
    ):
        if key in result.paths:
            page.figure(result.paths[key], caption)


def _summary(metrics: dict[str, Any], classifier: Classifier, macs: int) -> Table:
    test, data = metrics["test"], metrics["data"]
    tta = (
        f" ({test['accuracy_without_tta']:.4f} without test-time augmentation)"
        if "accuracy_without_tta" in test
        else ""
    )
    return Table(
        None,
        [
            [
                "data",
                f"{data['name']}: {data['train']} train / {data['val']} validation / {data['test']} test images, "
                f"{data['channels']}x{data['image_size']}x{data['image_size']}, {len(data['classes'])} classes",
            ],
            [
                "model",
                f"{classifier.model_name}, {metrics['parameters']:,} parameters, {macs:,} multiply-adds per image",
            ],
            ["test subset accuracy" if "mAP" in test else "test accuracy", f"{test['accuracy']:.4f}{tta}"],
            ["macro F1", f"{test['macro_f1']:.4f}"],
            *([["mAP", f"{test['mAP']:.4f}"], ["micro F1", f"{test['micro_f1']:.4f}"]] if "mAP" in test else []),
            *([["balanced accuracy", f"{test['balanced_accuracy']:.4f}"]] if "balanced_accuracy" in test else []),
            [
                "training",
                f"{metrics['epochs_run']} epochs in {metrics['train_seconds']:.1f} s on {metrics['device']} "
                f"({metrics['images_per_second']:.0f} images/s), best epoch {metrics['best_epoch']}",
            ],
        ],
    )


def write_report(path: str | os.PathLike, out: str | os.PathLike | None, log: Callable[[str], None]) -> Path:
    run = RunDir.find(path)
    metrics = run.read_metrics()
    classifier = load(run.path, device="cpu")
    predictions = test_predictions(run, classifier, log)
    errors_result = write_errors(predictions, classifier.classes, ERRORS_TOP, run / rundir.ERRORS, quiet)
    examples, labels = _examples(predictions, classifier.classes)
    inspected = inspect_classifier(classifier, examples[-1] if len(examples) else None, run / rundir.INSPECT, quiet)
    explained, method = _explanations(classifier, examples, labels, run / rundir.EXPLAIN)

    test = metrics["test"]
    page = HtmlReport(
        f"{run.path.name}: {classifier.model_name} on {metrics['data']['name']}",
        f"test {'subset ' if 'mAP' in test else ''}accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}; report written "
        f"{datetime.now():%Y-%m-%d %H:%M} by imgclf from {run.path.resolve()}",
    )
    page.section("Summary")
    page.table(_summary(metrics, classifier, inspected.macs))
    search = run.read_search()
    if search is not None:
        _section_search(page, search)
    page.section("Training")
    page.figure(run / rundir.CURVES, "loss and accuracy per epoch, training and validation")
    page.figure(run / rundir.SAMPLES, "training images as the network saw them (after augmentation)")
    _section_metrics(page, metrics, run)
    unknown = run.read_unknown_result()
    if unknown is not None:
        _section_unknown(page, unknown, run)
    _section_errors(page, errors_result)
    doctor = run / rundir.DOCTOR
    if (doctor / "doctor.json").is_file():  # written by `imgclf doctor DATA --run RUN`
        from ..doctor.output import add_section

        add_section(page, json.loads((doctor / "doctor.json").read_text()), doctor)
    if explained is not None:
        page.section("Explanations")
        page.text(
            "Grad-CAM heat maps on the last conv block: red marks the image regions the top class rests on "
            "(`imgclf explain` draws one per predicted label of a multi-label run)."
            if method == "gradcam"
            else "Saliency maps: red marks the pixels the top class is most sensitive to."
        )
        page.figure(explained, "test images (most confident mistakes first), each beside its heat map")
    _section_model(page, inspected)
    page.section("Config")
    page.pre(yaml.safe_dump(classifier.config, sort_keys=False))
    written = page.write(Path(out) if out else run / rundir.REPORT)
    log(f"report: {written}")
    return written
