"""The Python API: short functions over the stages, each as the command of the same name runs it.

``train`` runs config -> data -> model -> fit -> evaluate and leaves a run directory (see
:mod:`imgclf.rundir`); ``evaluate``, ``predict``, ``inspect``, ``explain``, ``errors``, ``compare`` and
``report`` read one. Progress goes to ``log`` (printed by default; ``log=lambda _: None`` for silence),
never straight to the terminal from the stages.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_MAX_IMAGE_PIXELS, DataConfig, TrainConfig, data_config
from .errors import ConfigError, name_settings
from .explain import ERRORS_TOP
from .export import backend_names
from .fsutil import untaken
from .rundir import DOCTOR, ERRORS, EXPLAIN, INSPECT, RunDir
from .runtime import Log, quiet

# Each function imports its stage when called: `imgclf --help` loads no torch, and `imgclf predict` starts
# without torchmetrics, captum or the report (about 1.5 s and 100 MB on the project's CPU).
if TYPE_CHECKING:
    from .data.pack import PackResult
    from .doctor.curve import LearningCurve
    from .doctor.output import DoctorResult
    from .explain import ErrorsResult, ExplainResult, InspectResult
    from .explain.similar import Embeddings, SimilarResult
    from .export import ExportResult
    from .predict import Classifier, ImageInput, Predictions
    from .report.compare import CompareResult
    from .rundir import SplitMetrics
    from .serve import ServeSettings
    from .shipping import FormatRow
    from .studio import StudioSettings
    from .train import TrainResult
    from .train.lr_find import LrFindResult

BACKENDS = backend_names()  # PyTorch itself, or an exported format's runtime (imgclf.export.FORMATS)

__all__ = [
    "BACKENDS",
    "compare",
    "describe_dataset_sources",
    "describe_models",
    "doctor",
    "embed",
    "errors",
    "classifier",
    "evaluate",
    "explain",
    "export",
    "benchmark",
    "inspect",
    "learning_curve",
    "lr_find",
    "pack",
    "predict",
    "recipe_train_images",
    "report",
    "serve",
    "studio",
    "similar",
    "train",
]


def show(message: str) -> None:
    """The default ``log``: the message on standard output (a warning on standard error, as every command's
    warnings are), its settings named for the caller."""
    warning = message.startswith("warning:")
    stream = sys.stderr if warning else sys.stdout
    try:
        print(name_settings(message), file=stream, flush=True)  # noqa: T201  the API's one place that writes to the terminal
    except BrokenPipeError:
        # the reader left (`imgclf train | head`): the work goes on, its messages to nowhere, rather than a
        # training run failing for want of an audience
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def train(
    config: TrainConfig | str | os.PathLike | None = None,
    *,
    resume: str | os.PathLike | None = None,
    callbacks: Iterable[Callable[[int, dict], None]] = (),
    verbose: bool = True,
    **settings: Any,
) -> TrainResult:
    """Train a classifier and write its run directory.

    ``config`` is a :class:`TrainConfig`, a YAML file or a run directory; ``settings`` override its
    fields (``imgclf.train(data="mnist", model="cnn", epochs=2)``). ``resume`` continues an interrupted
    run from its ``last.pt`` (one stopped before its first epoch starts again in its folder). ``callbacks``
    are called as ``fn(epoch, history_row)`` after each epoch. ``TrainResult.config`` is the resolved
    :class:`~imgclf.config.RunConfig`, with where each value came from.
    """
    from .train import train_run  # deferred: importing imgclf, or predicting, never loads the trainer

    log = show if verbose else quiet
    result = train_run(config, resume, settings, callbacks, log, verbose)
    if result.config.run.report and result.main_process:  # distributed: the main process reports for all
        report(result.run_dir, log=log)
    return result


def lr_find(
    config: TrainConfig | str | os.PathLike | None = None,
    *,
    out: str | os.PathLike = "lr_find.png",
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    steps: int = 100,
    verbose: bool = True,
    **settings: Any,
) -> LrFindResult:
    """The learning-rate finder for the run ``train`` would start with the same ``config`` and ``settings``:
    the smoothed loss over ``steps`` steps of a log-spaced sweep, plotted into ``out``, and a suggested lr."""
    from .train.lr_find import lr_find as sweep
    from .train.pipeline import starting_config

    return sweep(
        starting_config(config, None, settings).settings, Path(out), show if verbose else quiet, start_lr, end_lr, steps
    )


def doctor(
    data: str,
    *,
    run: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    fix: bool = False,
    labels: bool = True,
    near: bool = True,
    models: Sequence[str] = ("probe", "cnn"),
    folds: int = 5,
    epochs: int | None = None,
    device: str = "auto",
    verbose: bool = True,
    **settings: Any,
) -> DoctorResult:
    """What is wrong with a dataset: odd and unreadable files, exact and near duplicates (within a class,
    across classes, across the splits training would use: leaks), class balance, and likely label errors by
    confident learning on out-of-fold probabilities: a linear probe on the shipped backbone's embeddings and
    the quick cnn (``folds`` x ``epochs``, default by the images: 4 to 12), whichever ``models`` hold out best (or the predictions of ``run``,
    in-sample for its training images). Every image is ranked, the count believed wrong is estimated, and the
    model's held-out accuracy and calibration are written; below 90% accuracy the label findings are called
    weak. Writes doctor.json, grids and doctor.html into ``out`` (default: doctor/ beside the data); ``fix``
    adds moves.csv and exclude.txt (for ``train(exclude=...)``; weak label findings left out), deleting nothing."""
    from .data.images import fit_tensor, to_channels
    from .doctor import examine, summary, take_inventory, write_findings
    from .doctor.models import doctor_models, embeddings, strength
    from .doctor.output import DoctorResult
    from .predict import load
    from .recipes import image_size_cap
    from .runtime import resolve_device

    if folds < 2:
        raise ConfigError(f"`folds` {folds}: cross-validation needs at least 2 folds (default 5)")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"`epochs` {epochs}: each fold's cnn trains at least 1 epoch")
    log = show if verbose else quiet
    cfg = data_config(data=data, **settings)
    inventory = take_inventory(cfg, image_size_cap(resolve_device(device).type))
    log(f"examining {len(inventory):,} images of {inventory.name} ({len(inventory.skipped)} unusable files)")
    probs, features, model, trusted = None, None, None, True
    not_checked = inventory.task.refusal("label_check") if labels else None
    if not_checked:  # before `run`: several labels' sigmoids are not one class's probabilities
        log(not_checked)
    elif run is not None:
        loaded = load(run, device=device)
        images = to_channels(fit_tensor(inventory.images, loaded.image_size, loaded.spec.resize), loaded.channels)
        probs = loaded.predict_proba(images)
        measured = strength(f"the run {loaded.path} (in-sample for its training images)", probs, inventory.labels)
        model, trusted = {"used": measured.model, "candidates": [measured.__dict__]}, measured.trusted
        log(f"label issues from the predictions of {loaded.path} (in-sample for its training images)")
        features = embeddings(inventory, resolve_device(device), cfg.cache_dir)[0]  # the suspects' neighbours
    elif labels:
        found = doctor_models(
            inventory, models=models, seed=cfg.seed, epochs=epochs, folds=folds, device=device,
            cache_dir=cfg.cache_dir, log=log,
        )  # fmt: skip
        probs, features, model, trusted = found.probs, found.features, found.to_dict(), found.strength.trusted
    findings = examine(inventory, probs, near=near, features=features, model=model, trusted=trusted, log=log)
    if not_checked:
        findings.notes.append(not_checked)
    folder = Path(out) if out else _doctor_folder(cfg.data, inventory.kind)
    written = write_findings(findings, folder, fix)
    if run is not None and Path(run).is_dir():  # the run's report shows the data's health
        write_findings(findings, Path(run) / DOCTOR)
    log(summary(findings))
    log(f"written: {', '.join(str(p) for p in written.values())}")
    return DoctorResult(findings.to_dict(), written)


def _doctor_folder(data: str, kind: str) -> Path:
    """doctor/ beside the data (here for a built-in dataset), doctor-2/ ... where an earlier one is."""
    path = Path(data).expanduser()
    return untaken((path.resolve().parent / "doctor") if kind != "builtin" else Path("doctor"))


def pack(
    data: str,
    out: str | os.PathLike,
    *,
    shard_size: int = 2000,
    jpeg_quality: int | None = None,
    device: str = "auto",
    verbose: bool = True,
    **settings: Any,
) -> PackResult:
    """Pack a folder or CSV into WebDataset tar shards in ``out`` for streaming training (``train(data=out)``):
    the splits, image size and pixels that training on ``data`` with the same ``settings`` (``image_size``,
    ``seed``, ``val_split``, ...) would use; ``shard_size`` images a shard; PNG, or JPEG at ``jpeg_quality``."""
    from .data.pack import pack as write_shards
    from .recipes import image_size_cap
    from .runtime import resolve_device

    cfg = data_config(data=data, **settings)
    cap = image_size_cap(resolve_device(device).type)
    return write_shards(cfg, out, shard_size, jpeg_quality, cap, show if verbose else quiet)


def evaluate(
    path: str | os.PathLike,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    images: str | None = None,
    negatives: str | os.PathLike | None = None,
    device: str = "auto",
    verbose: bool = True,
) -> SplitMetrics | dict[str, Any]:
    """Re-evaluate a run directory or checkpoint on its test split (or on another dataset with the same classes).

    For a run directory the metrics are also written to ``evaluation.json`` in it. With ``negatives`` (a folder
    of images of none of its classes), how well it answers "none of these" instead: per share of its real test
    images kept, the share of ``negatives`` accepted, for the calibrated top probability and for familiarity
    (the distance to the training images); the better at 95% becomes what ``min_confidence`` reads for the run
    (predict, serve). Written to the run's unknown.json; the report draws the curve.
    """
    from .evaluate import evaluate_negatives, evaluate_run

    log = show if verbose else quiet
    overrides = {k: v for k, v in {"data": data, "data_dir": data_dir, "images": images}.items() if v is not None}
    if negatives is not None:
        return evaluate_negatives(path, negatives, device=device, log=log, **overrides)
    return evaluate_run(path, device=device, log=log, **overrides)


def classifier(
    checkpoint: str | os.PathLike,
    *,
    device: str = "auto",
    backend: str = "torch",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    threshold: float | None = None,
    log: Log = quiet,
) -> Classifier:
    """A run (or checkpoint) loaded for inference; ``backend="onnx"`` (or another of
    :data:`imgclf.export.FORMATS`) runs its forward pass in that format's runtime (exported into RUN/export
    first when needed); ``threshold``: a run with several labels per image predicts every class from this
    probability on, instead of its per-class thresholds."""
    from .predict import load

    if backend not in BACKENDS:
        raise ConfigError(f"`backend` {backend}: unknown; use {' or '.join(BACKENDS)}")
    loaded = load(checkpoint, device=device, max_image_pixels=max_image_pixels)
    loaded.set_threshold(threshold)
    if backend != "torch":
        from .export import exported_backend  # deferred: the exporter needs onnx, the [export] extra

        loaded.backend = exported_backend(checkpoint, backend, log)
    return loaded


def predict(
    checkpoint: str | os.PathLike,
    images: ImageInput | Sequence[ImageInput],
    *,
    top_k: int = 1,
    device: str = "auto",
    backend: str = "torch",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    min_confidence: float = 0.0,
    threshold: float | None = None,
) -> Predictions:
    """Predict image files, folders, PIL images or tensors with a run directory or checkpoint; files inside
    folders that are not usable images are listed in the result's ``skipped``; a prediction whose calibrated
    top probability is below ``min_confidence`` is labelled ``unknown``. A multi-label run answers each image
    with every label over its threshold (``labels``; ``threshold`` sets one for all). For folders too large
    to hold, ``classifier(checkpoint).stream(images)`` yields the predictions batch by batch."""
    model = classifier(
        checkpoint, device=device, backend=backend, max_image_pixels=max_image_pixels, threshold=threshold
    )
    return model.predict(images, top_k=top_k, min_confidence=min_confidence)


def export(
    run: str | os.PathLike,
    *,
    format: str = "onnx",
    out: str | os.PathLike | None = None,
    force: bool = False,
    log: Log = show,
) -> ExportResult:
    """Export a run's model in ``format`` (:data:`imgclf.export.FORMATS`: onnx, torchscript, onnx-int8) with its
    preprocessing, class names and how to decide, checked against PyTorch on the run's test images; written to
    ``out`` (default RUN/export) with a model card. INT8 is calibrated on the run's validation images and
    judged on its test split: past its accuracy limit it is written only with ``force``."""
    from .export import export as export_run  # deferred: torch.onnx loads onnxscript

    result = export_run(run, format, out, log, force)
    log(result.summary())
    return result


def serve(
    run: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log: Log = show,
) -> None:
    """Serve a run's model: the web page at ``/``, ``POST /predict``, ``/health``, ``/model`` and the API
    docs at ``/docs``, until interrupted. Needs ``pip install 'imgclf[serve]'``."""
    from .serve import run_server  # deferred: FastAPI and uvicorn are the [serve] extra

    run_server(run, host=host, port=port, settings=settings, log=log)


def studio(
    folder: str | os.PathLike = ".",
    *,
    host: str = "127.0.0.1",
    port: int = 8500,
    settings: StudioSettings | None = None,
    log: Log = show,
) -> None:
    """The studio: the runs and data folders in ``folder`` in a local web page at http://HOST:PORT/, live (start,
    stop and resume training, compare runs, review the doctor's findings, try a model, make a dataset), its JSON
    API under /api/ (docs at /docs), until interrupted. Needs ``pip install 'imgclf[serve]'``."""
    from .studio import run_studio  # deferred: FastAPI and uvicorn are the [serve] extra

    run_studio(folder, host=host, port=port, settings=settings, log=log)


def inspect(
    path: str | os.PathLike, *, image: ImageInput | None = None, out: str | os.PathLike | None = None, log: Log = show
) -> InspectResult:
    """The model of a run (or checkpoint) layer by layer, its first-layer kernels and, given an image, its
    feature maps; figures and ``layers.json`` go to ``out`` (default: the run's ``inspect/`` folder)."""
    from .explain import inspect_classifier
    from .predict import load

    classifier = load(path, device="cpu")
    pixels = classifier.to_uint8(image) if image is not None else None
    return inspect_classifier(
        classifier, pixels, Path(out) if out else RunDir.checkpoint_path(path).parent / INSPECT, log
    )


def explain(
    path: str | os.PathLike,
    images: ImageInput | Sequence[ImageInput],
    *,
    method: str = "gradcam",
    layer: str | None = None,
    target: str | None = None,
    top_k: int = 3,
    out: str | os.PathLike | None = None,
    log: Log = show,
) -> ExplainResult:
    """Heat maps of what a run's model looks at in ``images`` (files, folders, PIL images, tensors), for the
    predicted class or ``target``; figures go to ``out`` (default: the run's ``explain/`` folder)."""
    from .explain import explain_sources
    from .predict import load

    classifier = load(path, device="cpu")
    sources, batch, skipped = classifier.read_images(images)
    for file, reason in skipped:
        log(f"warning: skipped {file}: {reason}")
    folder = Path(out) if out else RunDir.checkpoint_path(path).parent / EXPLAIN
    result = explain_sources(
        classifier, sources, batch, method=method, layer=layer, target=target, top_k=top_k, folder=folder, log=log
    )
    result.skipped = skipped
    return result


def errors(
    run: str | os.PathLike, *, top: int = ERRORS_TOP, out: str | os.PathLike | None = None, log: Log = show
) -> ErrorsResult:
    """Where a run's model is wrong on its test set: the ``top`` most confident mistakes (grid and list),
    the most confused class pairs, and per-class accuracy worst first; written to ``out`` (default RUN/errors)."""
    from .evaluate import test_predictions
    from .explain import write_errors

    if top < 0:
        raise ConfigError(f"`top` {top}: must be 0 or more (how many mistakes to list)")
    from .predict import load

    found = RunDir.find(run)
    classifier = load(found.path, device="cpu")
    predictions = test_predictions(found, classifier, log)
    return write_errors(predictions, classifier.classes, top, Path(out) if out else found / ERRORS, log)


def learning_curve(
    data: str,
    *,
    out: str | os.PathLike | None = None,
    fractions: Sequence[float] | None = None,
    seeds: int | None = None,
    device: str = "auto",
    log: Log = show,
    **settings: Any,
) -> LearningCurve:
    """How many more images do I need: the shipped lite0's linear probe trained on 10% ... 100% of each class
    (``seeds`` draws each, from the embedding cache), a power law fitted per class and overall, and what 2x and
    4x the images would likely give; learning_curve.png and .json into ``out`` (default: learning_curve/, or
    learning_curve-2/ ... where an earlier one is). ``settings``: data settings."""
    from .doctor.curve import FRACTIONS, SEEDS
    from .doctor.curve import learning_curve as curve

    data_config(data=data, **settings)  # the data settings checked, one line each, before any work
    fractions = tuple(fractions or FRACTIONS)
    if any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"`fractions` {list(fractions)}: each must be in (0, 1]")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"`seeds` {seeds}: must be 1 or more")
    config = TrainConfig(data=data, device=device, **settings)
    return curve(config, Path(out) if out else untaken("learning_curve"), log, fractions, seeds or SEEDS)


def embed(
    images: Sequence[str | os.PathLike],
    *,
    run: str | os.PathLike | None = None,
    out: str | os.PathLike = "embeddings.npz",
    device: str = "auto",
    log: Log = show,
) -> Embeddings:
    """Embeddings of image files and folders (what the class layer sees): the run's network, or without a run
    the shipped lite0's ImageNet features at 224 px; written to ``out`` (.npz: files, their class sub-folders as
    labels, features, model)."""
    from .explain.similar import embed_images
    from .predict import load

    result = embed_images(images, load(run, device=device) if run is not None else None, device)
    result.save(out)
    log(f"{len(result.files):,} embeddings of {result.features.shape[1] if len(result.files) else 0} values "
        f"({result.model}, {result.image_size} px) written to {out}")  # fmt: skip
    return result


def similar(
    run: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    *,
    k: int = 8,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    log: Log = show,
) -> list[SimilarResult]:
    """For each image, the ``k`` nearest training images of ``run`` by its embeddings, with their labels:
    a table each, and a grid each in ``out`` (default RUN/similar)."""
    from .explain.similar import similar as nearest

    if k < 1:
        raise ConfigError(f"`k` {k}: must be 1 or more (how many neighbours to show)")
    results = nearest(run, images, k, out, device)
    for result in results:
        log(f"{result.query}:")
        log(result.table().to_text())
        log(f"grid: {result.plot}")
    return results


def benchmark(run: str | os.PathLike, *, formats: Sequence[str] | None = None, log: Log = show) -> list[FormatRow]:
    """Every format of the export table that runs here beside eager PyTorch, on the run's test split: file size,
    test accuracy, answers shared with PyTorch, images/s at batch 1 and 32, start-up seconds; each format exported
    first where missing; ``formats``: those of the table to time (default all). Written to RUN/benchmark/ (JSON,
    table, plot); the report shows it."""
    from .shipping import benchmark as measure
    from .shipping import benchmark_table

    rows = measure(run, log, formats)
    log(benchmark_table(rows).to_text())
    return rows


def compare(
    runs: Sequence[str | os.PathLike], *, out: str | os.PathLike = "comparison.png", log: Log = show
) -> CompareResult:
    """Runs side by side: test accuracy, macro F1, train seconds, parameters and multiply-adds per image,
    as a table and a bar plot (``out``, default ./comparison.png)."""
    from .report.compare import compare_runs

    return compare_runs(runs, out, log)


def report(run: str | os.PathLike, *, out: str | os.PathLike | None = None, log: Log = show) -> Path:
    """One self-contained HTML page of a run (default RUN/report.html): config, curves, metrics, confusion
    matrix, errors, the model layer by layer and Grad-CAM explanations of test images."""
    from .report.page import write_report

    return write_report(run, out, log)


def describe_dataset_sources() -> list[tuple[str, str]]:
    """(name, description) of every registered dataset, then of every kind of path (folder, CSV, shards)."""
    from .data import list_datasets, list_sources

    rows = [(spec.name, spec.description) for spec in list_datasets()]
    return rows + [(source.usage, name_settings(source.description)) for source in list_sources()]


def describe_models(
    in_channels: int = 3, image_size: int = 32, num_classes: int = 10
) -> list[tuple[str, int | None, str]]:
    """(name, parameters for a 3x32x32 10-class input, description); model families have no single count."""
    from .models import count_parameters, create_model, list_model_families, list_models

    rows: list[tuple[str, int | None, str]] = [
        (
            spec.name,
            count_parameters(create_model(spec.name, in_channels, num_classes, image_size)),
            name_settings(spec.description),
        )
        for spec in list_models()
    ]
    return rows + [(f"{prefix}:NAME", None, description) for prefix, description in list_model_families()]


def recipe_train_images(data: str | None = None) -> dict[str, int | None]:
    """Training images (after the held-out splits) of each recipe's dataset, as ``imgclf recipes`` shows
    them: the built-in datasets' known sizes, a large folder (None), or the folder or CSV ``data`` counted."""
    from .data import get_dataset, list_datasets
    from .data.folder import count_training_files
    from .data.registry import training_images
    from .recipes import RECIPES

    def after_splits(spec: Any) -> int | None:
        if spec.train_images is None:
            return None
        return training_images(spec.train_images, DataConfig(), hold_test=not spec.has_test_split)

    if data is None:
        known = {spec.name: after_splits(spec) for spec in list_datasets() if spec.name in RECIPES}
        return {**known, "folder": None}
    if Path(data).expanduser().exists():
        return {"folder": count_training_files(DataConfig(data=data))}
    return {get_dataset(data).name: after_splits(get_dataset(data))}
