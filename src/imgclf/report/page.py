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
from ..evaluate import test_predictions, unknown_table
from ..explain import (
    ERRORS_TOP,
    ErrorsResult,
    InspectResult,
    explain_batch,
    inspect_classifier,
    plot_explanation_pages,
    spatial_layers,
    test_image_names,
    write_errors,
)
from ..plots.html import HtmlReport
from ..plots.tables import Table
from ..predict import Classifier, load
from ..rundir import RunDir, RunMetrics, SplitPredictions, unknown_operating_points
from ..runtime import quiet
from ..tasks import label_names

REPORT_RIGHT, REPORT_WRONG = 6, 6  # test images explained in the report


def _examples(predictions: SplitPredictions, classes: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Stored test images to explain, the most confident mistakes first then some right answers, with labels."""
    index = predictions.example_index
    wrong = predictions.wrong[index]
    picked = torch.cat([torch.nonzero(wrong).flatten()[:REPORT_WRONG], torch.nonzero(~wrong).flatten()[:REPORT_RIGHT]])
    truth = label_names(predictions.labels[index], classes)
    names = test_image_names(predictions, [int(index[k]) for k in picked.tolist()])
    labels = [f"{name} {'wrong' if wrong[k] else 'right'} (true {truth[k]})" for name, k in zip(names, picked.tolist())]
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


def _section_unknown(page: HtmlReport, unknown: dict[str, Any], run: RunDir) -> None:
    """How well `unknown` turns away images of none of the classes (evaluate --negatives)."""
    at = unknown_operating_points(unknown)
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
    page.text(f"{len(analysis.mistakes)} wrong of {analysis.samples} test images{analysis.wrong_words}.")
    page.table(analysis.class_accuracy_table())
    if analysis.confused_pairs:
        page.text(analysis.pairs_caption)
        page.table(analysis.confused_pairs_table())
    if "mistakes" in result.paths:
        page.figure(result.paths["mistakes"], analysis.mistakes_caption)


def _section_shipping(page: HtmlReport, run: RunDir) -> None:
    """`imgclf benchmark`'s table and plot, where it was run."""
    from ..shipping import PLOT, RESULTS, FormatRow, benchmark_table

    path = run / rundir.BENCHMARK / RESULTS
    try:
        measured = json.loads(path.read_text())
        rows = [
            FormatRow(**{**r, "images_per_second": {int(b): v for b, v in r["images_per_second"].items()}})
            for r in measured["rows"]
        ]
    except (OSError, ValueError, KeyError, TypeError):  # not benchmarked (or by another version): no section
        return
    page.section("Shipping")
    page.text(
        f"The model in each export format that runs here, beside eager PyTorch, on the {measured['test_images']:,} "
        f"test images ({measured['machine']['cpu']}, {measured['machine']['threads']} threads): `imgclf benchmark`."
    )
    page.table(benchmark_table(rows))
    page.figure(run / rundir.BENCHMARK / PLOT, "images per second per format and batch size")


def _section_search(page: HtmlReport, search: dict[str, Any]) -> None:
    """What the folder default tried on held-out images, what it cost, and why it chose (search.json)."""
    page.section("How the model was chosen")
    page.text(
        f"With no model given, imgclf tried these on held-out images ({search['metric']}) within a budget of "
        f"{search['budget_seconds']:.0f} s of this machine's measured work, and chose {search['chosen']} at "
        f"{search['image_size']} px: {search['reason']}."
        + (f" How sure: {search['sure']}." if search.get("sure") else "")
    )
    page.table(
        Table(
            ["candidate", "px", f"held-out {search['metric']}", "seconds", "how"],
            [
                [
                    t["candidate"],
                    str(t["image_size"]),
                    f"{t['score']:.4f}" + (f" ± {t['stderr']:.3f}" if t.get("stderr") else ""),
                    f"{t['seconds']:.1f}",
                    t["how"],
                ]
                for t in search["trials"]
            ],
        )
    )
    if search.get("spent"):
        spent = ", ".join(f"{part} {seconds:.0f} s" for part, seconds in search["spent"].items())
        page.text(f"How the budget went: {spent}.")
    if search.get("left_out"):
        page.text(f"What a larger budget would buy: {'; '.join(search['left_out'])}.")


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


def _summary(metrics: RunMetrics, classifier: Classifier, macs: int) -> Table:
    data = metrics.data
    return Table(
        None,
        [
            [
                "data",
                f"{data.name}: {data.train} train / {data.val} validation / {data.test} test images, "
                f"{data.channels}x{data.image_size}x{data.image_size}, {len(data.classes)} classes",
            ],
            [
                "model",
                f"{classifier.model_name}, {metrics.parameters:,} parameters, {macs:,} multiply-adds per image",
            ],
            *classifier.task.summary_rows(metrics.test),
            [
                "training",
                f"{metrics.epochs_run} epochs in {metrics.train_seconds:.1f} s on {metrics.device} "
                f"({metrics.images_per_second:.0f} images/s), best epoch {metrics.best_epoch}",
            ],
        ],
    )


def write_report(path: str | os.PathLike, out: str | os.PathLike | None, log: Callable[[str], None]) -> Path:
    run = RunDir.find(path)
    metrics = run.read_metrics()
    classifier = load(run.path, device="cpu")
    predictions = test_predictions(run, classifier, log)
    errors_result = write_errors(
        predictions, classifier.classes, ERRORS_TOP, run.output("report", rundir.ERRORS), quiet
    )
    examples, labels = _examples(predictions, classifier.classes)
    example = examples[-1] if len(examples) else None
    inspected = inspect_classifier(classifier, example, run.output("report", rundir.INSPECT), quiet)
    explained, method = _explanations(classifier, examples, labels, run.output("report", rundir.EXPLAIN))

    page = HtmlReport(
        f"{run.path.name}: {classifier.model_name} on {metrics.data.name}",
        f"{metrics.headline()}; report written {datetime.now():%Y-%m-%d %H:%M} by imgclf from {run.path.resolve()}",
    )
    page.section("Summary")
    page.table(_summary(metrics, classifier, inspected.macs))
    search = run.read_search()
    if search is not None:
        _section_search(page, search)
    page.section("Training")
    page.figure(run / rundir.CURVES, "loss and accuracy per epoch, training and validation")
    page.figure(run / rundir.SAMPLES, "training images as the network saw them (after augmentation)")
    classifier.task.report_sections(page, metrics, run.path)
    unknown = run.read_unknown_result()
    if unknown is not None:
        _section_unknown(page, unknown, run)
    _section_errors(page, errors_result)
    doctor = run / rundir.DOCTOR
    if (doctor / "doctor.json").is_file():  # written by `imgclf doctor DATA --run RUN`
        from ..doctor.output import add_section

        add_section(page, json.loads((doctor / "doctor.json").read_text()), doctor)
    _section_shipping(page, run)
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
    written = page.write(Path(out) if out else run.output("report", rundir.REPORT))
    log(f"report: {written}")
    return written
