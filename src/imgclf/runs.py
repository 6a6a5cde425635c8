"""The API over finished runs: ``inspect``, ``explain``, ``errors``, ``compare`` and ``report``.

Everything here reads a run directory (or a checkpoint) and writes figures and tables beside it;
nothing reaches into training. ``errors`` and ``report`` read the run's ``test_predictions.pt``; a run
made before imgclf kept that file gets it computed once from its data, if the data is still there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import TrainConfig
from .data import DataBundle, load_data
from .errors import CheckpointError, ConfigError, ImgclfError
from .evaluate import SplitPredictions
from .explain import (
    METHODS, ErrorAnalysis, Explanation, LayerInfo, analyse_errors, explain_images, feature_maps, first_layer_kernels,
    inspect_model, last_conv_block, mlp_parameters_for, spatial_layers,
)
from .fsutil import atomic_write_json
from .predict import Classifier, ImageInput, load
from .report import (
    HtmlReport, plot_comparison, plot_explanations, plot_feature_maps, plot_image_grid, plot_kernels, table,
)

Log = Callable[[str], None]
PREDICTIONS_FILE = "test_predictions.pt"
EXPLAIN_PAGE = 12  # images per explanation figure
EXPLAIN_BATCH = 32


def _quiet(_message: str) -> None:
    pass


def run_directory(path: str | os.PathLike) -> Path:
    """A run directory, also when given one of its checkpoints."""
    path = Path(path)
    run = path.parent if path.is_file() else path
    if not (run / "best.pt").is_file():
        raise CheckpointError(f"{path}: not a run directory (no best.pt); pass the folder a training run wrote")
    return run


def _read_metrics(run: Path) -> dict[str, Any]:
    path = run / "metrics.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing, the run did not finish; complete it with: imgclf train --resume {run}")
    return json.loads(path.read_text())


def checkpoint_data(classifier: Classifier, source: str | os.PathLike, **overrides: Any) -> tuple[TrainConfig, DataBundle]:
    """The data a checkpoint was trained on (or other data given by ``overrides``), checked to have its classes."""
    cfg = TrainConfig.from_dict(classifier.config).replace(image_size=classifier.image_size, **overrides)
    dataset = load_data(cfg)
    if dataset.classes != classifier.classes or dataset.channels != classifier.channels:
        raise CheckpointError(
            f"{source}: the model knows {len(classifier.classes)} classes ({', '.join(classifier.classes[:5])}...) "
            f"with {classifier.channels} channel(s), but {cfg.data} has {dataset.num_classes} ({', '.join(dataset.classes[:5])}...) "
            f"with {dataset.channels}; use data with the same classes"
        )
    return cfg, dataset


def test_predictions(run: str | os.PathLike, log: Log = print) -> tuple[SplitPredictions, Classifier]:
    """The run's saved test predictions, computed (and saved) from its data for runs that lack them."""
    run = run_directory(run)
    classifier = load(run, device="cpu")
    path = run / PREDICTIONS_FILE
    if path.is_file():
        try:
            return SplitPredictions.load(path), classifier
        except CheckpointError as exc:
            log(f"warning: {exc}; predicting the test split again")
    else:
        log(f"{path.name} is missing (a run from an older imgclf): predicting the test split once")
    try:
        cfg, data = checkpoint_data(classifier, run)
    except ImgclfError as exc:
        raise CheckpointError(f"{run}: has no readable {path.name} and its data cannot be loaded ({exc}); "
                              "restore the data, or train the run again") from None
    probs = classifier.predict_proba(data.test.images, tta=bool(cfg.tta))
    predictions = SplitPredictions.from_probs(probs, data.test.labels, data.test.images, cfg.seed, data.test.sources)
    predictions.save(path)
    return predictions, classifier


# --- inspect -------------------------------------------------------------------------------------------


@dataclass
class InspectResult:
    layers: list[LayerInfo]
    parameters: int
    macs: int
    mlp_parameters: int
    paths: dict[str, Path]


def inspect(path: str | os.PathLike, *, image: ImageInput | None = None, out: str | os.PathLike | None = None,
            log: Log = print) -> InspectResult:
    """The model of a run (or checkpoint) layer by layer, its first-layer kernels and, given an image, its
    feature maps; figures and ``layers.json`` go to ``out`` (default: the run's ``inspect/`` folder)."""
    classifier = load(path, device="cpu")
    pixels = classifier.to_uint8(image) if image is not None else None
    return _inspect(classifier, pixels, Path(out) if out else Path(classifier.path).parent / "inspect", log)


def _inspect(classifier: Classifier, pixels: torch.Tensor | None, folder: Path, log: Log) -> InspectResult:
    model, channels, size = classifier.model, classifier.channels, classifier.image_size
    layers = inspect_model(model, channels, size)
    paths = {"layers": folder / "layers.json", "kernels": folder / "kernels.png"}
    result = InspectResult(layers, sum(layer.parameters for layer in layers), sum(layer.macs for layer in layers),
                           mlp_parameters_for(channels, size, len(classifier.classes)), paths)
    try:
        plot_kernels(first_layer_kernels(model), paths["kernels"])
    except ValueError:  # a model without convolutions (mlp) has no kernels to draw
        del paths["kernels"]
    if pixels is not None:
        paths["feature_maps"] = folder / "feature_maps.png"
        maps = feature_maps(model, classifier.normalise(pixels.unsqueeze(0)))
        plot_feature_maps(maps, paths["feature_maps"], image=pixels)
    atomic_write_json(paths["layers"], {"layers": [layer.to_dict() for layer in layers], "parameters": result.parameters,
                                        "macs": result.macs, "mlp_parameters": result.mlp_parameters,
                                        "input": [channels, size, size]})
    log(table(["layer", "type", "output", "parameters", "multiply-adds", "receptive field"], layer_rows(layers)))
    log(weight_sharing_summary(result, channels, size))
    log(f"figures and layers.json in {folder}")
    return result


def layer_rows(layers: Sequence[LayerInfo]) -> list[list[str]]:
    return [[l.name, l.kind, "x".join(map(str, l.output_shape)), f"{l.parameters:,}", f"{l.macs:,}",
             "-" if l.receptive_field is None else f"{l.receptive_field} (jump {l.jump})"] for l in layers]


def weight_sharing_summary(result: InspectResult, channels: int, size: int) -> str:
    return (f"total: {result.parameters:,} parameters, {result.macs:,} multiply-adds per {channels}x{size}x{size} image; "
            f"an mlp on the same {channels * size * size:,} inputs has {result.mlp_parameters:,} parameters "
            f"({result.mlp_parameters / max(result.parameters, 1):.1f}x)")


# --- explain -------------------------------------------------------------------------------------------


@dataclass
class ExplainResult:
    sources: list[str]
    explanations: list[Explanation]
    classes: list[str]
    paths: list[Path] = field(default_factory=list)

    def top_k(self, i: int) -> list[tuple[str, float]]:
        return [(self.classes[c], p) for c, p in self.explanations[i].top_k]


def _explain_tensor(classifier: Classifier, images: torch.Tensor, method: str, layer: str | None,
                    target: int | None, top_k: int) -> list[Explanation]:
    """Explanations of a uint8 batch, in chunks, with the user's mistakes turned into one-line errors."""
    model = classifier.model
    probe = classifier.normalise(images[:1])
    if method not in METHODS:
        raise ConfigError(f"--method {method}: unknown; use {' or '.join(METHODS)}")
    if method == "gradcam":
        names = [name for name, _ in spatial_layers(model, probe)]
        if not names:
            raise ConfigError(f"model {classifier.model_name} has no convolution layer for Grad-CAM; use --method saliency")
        if layer is not None and layer not in names:
            raise ConfigError(f"--layer {layer}: not a layer with an image-shaped output; choose one of {', '.join(names)}")
        layer = layer or last_conv_block(model, probe)
    explanations: list[Explanation] = []
    for start in range(0, len(images), EXPLAIN_BATCH):
        x = classifier.normalise(images[start:start + EXPLAIN_BATCH])
        explanations += explain_images(model, x, method=method, layer=layer, target=target, top_k=top_k)
    return explanations


def _explanation_titles(labels: Sequence[str], explanations: Sequence[Explanation], classes: Sequence[str]) -> list[str]:
    return [f"{label[:28]}\n" + ", ".join(f"{classes[c]} {p:.2f}" for c, p in e.top_k[:3])
            for label, e in zip(labels, explanations)]


def _plot_explanation_pages(images: torch.Tensor, labels: Sequence[str], explanations: Sequence[Explanation],
                            classes: Sequence[str], folder: Path, stem: str) -> list[Path]:
    first = explanations[0]
    how = f"Grad-CAM on {first.layer}" if first.method == "gradcam" else "saliency (input gradient)"
    paths = []
    for page, start in enumerate(range(0, len(images), EXPLAIN_PAGE), 1):
        path = folder / (f"{stem}.png" if page == 1 else f"{stem}-{page}.png")
        chunk = slice(start, start + EXPLAIN_PAGE)
        plot_explanations(images[chunk], [e.heatmap for e in explanations[chunk]],
                          _explanation_titles(labels[chunk], explanations[chunk], classes), path,
                          f"{how}: what the top class rests on (red), top-3 probabilities")
        paths.append(path)
    return paths


def explain(path: str | os.PathLike, images: ImageInput | Sequence[ImageInput], *, method: str = "gradcam",
            layer: str | None = None, target: str | None = None, top_k: int = 3,
            out: str | os.PathLike | None = None, log: Log = print) -> ExplainResult:
    """Heat maps of what a run's model looks at in ``images`` (files, folders, PIL images, tensors), for the
    predicted class or ``target``; figures go to ``out`` (default: the run's ``explain/`` folder)."""
    classifier = load(path, device="cpu")
    if target is not None and target not in classifier.classes:
        raise ConfigError(f"--target {target}: not a class of this model; choose one of {', '.join(classifier.classes[:20])}")
    sources, batch = classifier.read_images(images)
    target_index = classifier.classes.index(target) if target is not None else None
    explanations = _explain_tensor(classifier, batch, method, layer, target_index, top_k)
    folder = Path(out) if out else Path(classifier.path).parent / "explain"
    result = ExplainResult(sources, explanations, classifier.classes)
    result.paths = _plot_explanation_pages(batch, [Path(s).name for s in sources], explanations, classifier.classes, folder, method)
    rows = [[s] + [", ".join(f"{label} {p:.3f}" for label, p in result.top_k(i))] for i, s in enumerate(sources)]
    log(table(["image", f"top {top_k} (probability)"], rows))
    where = f" on layer {explanations[0].layer}" if method == "gradcam" else ""
    log(f"{method}{where}: {', '.join(str(p) for p in result.paths)}")
    return result


# --- errors --------------------------------------------------------------------------------------------


ERRORS_TOP = 25  # mistakes listed and drawn by default


@dataclass
class ErrorsResult:
    analysis: ErrorAnalysis
    paths: dict[str, Path]


def _test_image_name(predictions: SplitPredictions, index: int) -> str:
    """A test image as the user knows it: its file name for folders and CSVs, else its test index."""
    return Path(predictions.sources[index]).name[:20] if predictions.sources else f"#{index}"


def _plot_mistakes(analysis: ErrorAnalysis, predictions: SplitPredictions, top: int, path: Path) -> bool:
    """The most confident mistakes whose images the run kept, as a grid; False if there are none."""
    position = {int(i): k for k, i in enumerate(predictions.example_index.tolist())}
    shown = [m for m in analysis.mistakes[:top] if m.index in position]
    if not shown:
        return False
    images = predictions.example_images[[position[m.index] for m in shown]]
    titles = [f"{_test_image_name(predictions, m.index)} true {m.true}\npred {m.predicted} {m.confidence:.2f}" for m in shown]
    plot_image_grid(images, titles, path, ["red"] * len(shown), f"the {len(shown)} most confident mistakes on the test set")
    return True


def errors(run: str | os.PathLike, *, top: int = ERRORS_TOP, out: str | os.PathLike | None = None, log: Log = print) -> ErrorsResult:
    """Where a run's model is wrong on its test set: the ``top`` most confident mistakes (grid and list),
    the most confused class pairs, and per-class accuracy worst first; written to ``out`` (default RUN/errors)."""
    if top < 0:
        raise ConfigError(f"--top {top}: must be 0 or more (how many mistakes to list)")
    run = run_directory(run)
    predictions, classifier = test_predictions(run, log)
    return _errors(predictions, classifier.classes, top, Path(out) if out else run / "errors", log)


def _errors(predictions: SplitPredictions, classes: list[str], top: int, folder: Path, log: Log) -> ErrorsResult:
    analysis = analyse_errors(predictions, classes)
    paths = {"json": folder / "errors.json", "mistakes": folder / "mistakes.png"}
    if not _plot_mistakes(analysis, predictions, top, paths["mistakes"]):
        del paths["mistakes"]
    atomic_write_json(paths["json"], analysis.to_dict(top))
    log(f"{len(analysis.mistakes)} wrong of {analysis.samples} test images (accuracy {analysis.accuracy:.4f})")
    log("\nper-class accuracy, worst first:\n" + table(["class", "accuracy", "images"],
        [[c, f"{a:.4f}", n] for c, a, n in analysis.class_accuracy]))
    if analysis.confused_pairs:
        log("\nmost confused pairs:\n" + table(["true", "predicted as", "count"], [list(p) for p in analysis.confused_pairs[:10]]))
        log(f"\nthe {min(top, len(analysis.mistakes))} most confident mistakes:\n" + table(
            ["test #", "true", "predicted", "probability", "file"],
            [[m.index, m.true, m.predicted, f"{m.confidence:.4f}", m.source or ""] for m in analysis.mistakes[:top]]))
    log(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
    return ErrorsResult(analysis, paths)


# --- compare -------------------------------------------------------------------------------------------


def _run_summary(run: Path, name: str) -> dict[str, Any]:
    metrics = _read_metrics(run)
    classifier = load(run, device="cpu")
    macs = sum(layer.macs for layer in inspect_model(classifier.model, classifier.channels, classifier.image_size))
    return {"run": name, "data": metrics["data"]["name"], "model": classifier.model_name,
            "test_accuracy": metrics["test"]["accuracy"], "macro_f1": metrics["test"]["macro_f1"],
            "train_seconds": metrics["train_seconds"], "parameters": metrics["parameters"], "macs": macs}


def _short_names(runs: Sequence[Path]) -> list[str]:
    """Folder names, with their parent where two runs share a name."""
    names = [r.name for r in runs]
    return [f"{r.parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    path: Path


def compare(runs: Sequence[str | os.PathLike], *, out: str | os.PathLike = "comparison.png", log: Log = print) -> CompareResult:
    """Runs side by side: test accuracy, macro F1, train seconds, parameters and multiply-adds per image,
    as a table and a bar plot (``out``, default ./comparison.png)."""
    folders = [run_directory(r) for r in runs]
    rows = [_run_summary(run, name) for run, name in zip(folders, _short_names(folders))]
    plot_comparison(rows, out)
    log(table(["run", "data", "model", "test acc", "macro F1", "train s", "parameters", "multiply-adds"],
              [[r["run"], r["data"], r["model"], f"{r['test_accuracy']:.4f}", f"{r['macro_f1']:.4f}", f"{r['train_seconds']:.1f}",
                f"{r['parameters']:,}", f"{r['macs']:,}"] for r in rows]))
    if len({r["data"] for r in rows}) > 1:
        log("note: these runs were tested on different data; their accuracies are not comparable")
    log(f"plot: {out}")
    return CompareResult(rows, Path(out))


# --- report --------------------------------------------------------------------------------------------

REPORT_RIGHT, REPORT_WRONG = 6, 6  # test images explained in the report


def _report_examples(predictions: SplitPredictions, classes: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Stored test images to explain, the most confident mistakes first then some right answers, with labels."""
    index = predictions.example_index
    wrong = predictions.predicted[index] != predictions.labels[index]
    picked = torch.cat([torch.nonzero(wrong).flatten()[:REPORT_WRONG], torch.nonzero(~wrong).flatten()[:REPORT_RIGHT]])
    labels = [f"{_test_image_name(predictions, int(index[k]))} {'wrong' if wrong[k] else 'right'} "
              f"(true {classes[predictions.labels[index[k]]]})" for k in picked.tolist()]
    return predictions.example_images[picked], labels


def _report_explanations(classifier: Classifier, images: torch.Tensor, labels: list[str], folder: Path) -> tuple[Path | None, str]:
    if not len(images):
        return None, ""
    method = "gradcam" if spatial_layers(classifier.model, classifier.normalise(images[:1])) else "saliency"
    explanations = _explain_tensor(classifier, images, method, None, None, 3)
    return _plot_explanation_pages(images, labels, explanations, classifier.classes, folder, f"report-{method}")[0], method


def _section_metrics(page: HtmlReport, metrics: dict[str, Any], run: Path) -> None:
    test = metrics["test"]
    page.section("Test metrics")
    page.table(["class", "precision", "recall", "F1", "images"],
               [[name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]] for name, m in test["per_class"].items()]
               + [["all (accuracy / macro F1)", "", "", f"{test['accuracy']:.4f} / {test['macro_f1']:.4f}", test["samples"]]])
    page.figure(run / "plots" / "confusion_matrix.png", "confusion matrix: rows are the true classes, columns the predictions")
    page.figure(run / "plots" / "per_class.png", "precision, recall and F1 per class")
    page.figure(run / "plots" / "predictions.png", "a sample of test predictions (mistakes in red)")


def _section_errors(page: HtmlReport, result: ErrorsResult) -> None:
    analysis = result.analysis
    page.section("Errors")
    page.text(f"{len(analysis.mistakes)} wrong of {analysis.samples} test images.")
    page.table(["class", "accuracy", "images"], [[c, f"{a:.4f}", n] for c, a, n in analysis.class_accuracy])
    if analysis.confused_pairs:
        page.text("Most confused pairs (true class, predicted as, count):")
        page.table(["true", "predicted as", "count"], [list(p) for p in analysis.confused_pairs[:10]])
    if "mistakes" in result.paths:
        page.figure(result.paths["mistakes"], "the most confident mistakes: true class, prediction and its probability")


def _section_model(page: HtmlReport, result: InspectResult, classifier: Classifier) -> None:
    page.section("Inside the model")
    page.text(weight_sharing_summary(result, classifier.channels, classifier.image_size))
    page.table(["layer", "type", "output", "parameters", "multiply-adds", "receptive field"], layer_rows(result.layers))
    for key, caption in (("kernels", "the first layer's kernels"), ("feature_maps", "feature maps of one test image after each block and pooling")):
        if key in result.paths:
            page.figure(result.paths[key], caption)


def report(run: str | os.PathLike, *, out: str | os.PathLike | None = None, log: Log = print) -> Path:
    """One self-contained HTML page of a run (default RUN/report.html): config, curves, metrics, confusion
    matrix, errors, the model layer by layer and Grad-CAM explanations of test images."""
    run = run_directory(run)
    metrics = _read_metrics(run)
    predictions, classifier = test_predictions(run, log)
    errors_result = _errors(predictions, classifier.classes, ERRORS_TOP, run / "errors", _quiet)
    examples, labels = _report_examples(predictions, classifier.classes)
    inspected = _inspect(classifier, examples[-1] if len(examples) else None, run / "inspect", _quiet)
    explained, method = _report_explanations(classifier, examples, labels, run / "explain")

    test, data = metrics["test"], metrics["data"]
    page = HtmlReport(f"{run.name}: {classifier.model_name} on {data['name']}",
                      f"test accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}; report written "
                      f"{datetime.now():%Y-%m-%d %H:%M} by imgclf from {run.resolve()}")
    page.section("Summary")
    page.table(None, [
        ["data", f"{data['name']}: {data['train']} train / {data['val']} validation / {data['test']} test images, "
                 f"{data['channels']}x{data['image_size']}x{data['image_size']}, {len(data['classes'])} classes"],
        ["model", f"{classifier.model_name}, {metrics['parameters']:,} parameters, {inspected.macs:,} multiply-adds per image"],
        ["test accuracy", f"{test['accuracy']:.4f}" + (f" ({test['accuracy_without_tta']:.4f} without test-time augmentation)"
                                                        if "accuracy_without_tta" in test else "")],
        ["macro F1", f"{test['macro_f1']:.4f}"],
        ["training", f"{metrics['epochs_run']} epochs in {metrics['train_seconds']:.1f} s on {metrics['device']} "
                     f"({metrics['images_per_second']:.0f} images/s), best epoch {metrics['best_epoch']}"],
    ])
    page.section("Training")
    page.figure(run / "plots" / "curves.png", "loss and accuracy per epoch, training and validation")
    page.figure(run / "plots" / "samples.png", "training images as the network saw them (after augmentation)")
    _section_metrics(page, metrics, run)
    _section_errors(page, errors_result)
    if explained is not None:
        page.section("Explanations")
        page.text("Grad-CAM heat maps on the last conv block: red marks the image regions the top class rests on."
                  if method == "gradcam" else "Saliency maps: red marks the pixels the top class is most sensitive to.")
        page.figure(explained, "test images (most confident mistakes first), each beside its heat map")
    _section_model(page, inspected, classifier)
    page.section("Config")
    page.pre(yaml.safe_dump(classifier.config, sort_keys=False))
    path = page.write(Path(out) if out else run / "report.html")
    log(f"report: {path}")
    return path
