"""A trained model out of imgclf, in the formats of one table (:data:`FORMATS`, :func:`export_formats`).

What is exported is :class:`imgclf.predict.InferenceModel`, the graph that ``predict`` runs: uint8
pixels N x C x H x W in (any N), class probabilities out, the normalisation, the calibration and the
run's test-time augmentation (where it has one) inside. What a consumer must do before it (decode, fit
the image to the square, channels), the class names and how to decide are in a JSON file beside the
model. After writing, the exported model is run on the run's test images and on random images and
compared with PyTorch: above the format's tolerance the export fails and nothing is left on disk. An INT8
format is calibrated on the run's images and judged on its whole test split instead; a format whose runtime
does not exist on this system (CoreML off macOS) has its written spec checked and says it was not run.

A format is one row of :data:`FORMATS` (name, file or folder, exporter, the runtime that loads it, the extra
that installs them, the parity tolerance); the exporters live in :mod:`imgclf.exporters`, one module per
runtime. ``imgclf export --format``, ``predict --backend``, ``benchmark``, the API and the tests read the
table. This module imports no torch until a model is exported or loaded: the command line lists the formats
from it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import CheckpointError, ConfigError, ExportError, ImgclfError
from .exporters import CALIBRATION_IMAGES, converters_output_silenced, quiet_converter
from .exporters.coreml import CoreMLBackend, export_coreml
from .exporters.executorch import ExecuTorchBackend, export_executorch
from .exporters.litert import TfliteBackend, export_tflite, export_tflite_int8
from .exporters.onnx import OnnxBackend, export_onnx, export_onnx_int8
from .exporters.openvino import OpenVinoBackend, export_openvino, export_openvino_int8
from .exporters.torchscript import TorchScriptBackend, export_torchscript
from .fsutil import atomic_output, atomic_write_json, size_on_disk
from .modelcard import write_model_card
from .rundir import EXPORT, RunDir
from .runtime import Log, imgclf_version, quiet

if TYPE_CHECKING:
    import torch

    from .predict import Classifier

Backend = Callable[["torch.Tensor"], "torch.Tensor"]
T = TypeVar("T")
RANDOM_IMAGES = 16  # random uint8 images checked besides the run's test images

# how predict, serve and the run's own test metrics fitted an image to the square, for a user of the export
RESIZE_TEXT = {
    "crop": "shorter side to {size} px (bilinear, antialiased), then centre crop to {size}x{size}",
    "pad": "longer side to {size} px (bilinear, antialiased), then pad with black to {size}x{size}, centred",
    "stretch": "both sides to {size} px (bilinear, antialiased), the aspect ratio not kept",
}


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class ExportFormat:
    name: str  # `imgclf export --format NAME`, `predict --backend NAME`
    file: str  # the model file (or folder) written into the export folder; its metadata is FILE.json beside it
    # (InferenceModel, example uint8 batch, path, classes=, activation=[, calibration=uint8 validation images])
    exporter: Callable[..., None]
    backend: Callable[[Path], Backend]  # loads the file for inference: uint8 batch in, probabilities out
    extra: str  # `pip install 'imgclf[EXTRA]'` brings the exporter and the runtime
    tolerance: float  # largest |probability difference| against PyTorch a written model may show
    description: str
    # quantized: calibrated on the run's validation images and judged on its test split instead of by
    # `tolerance`: written only where the test accuracy falls by at most this much (or with --force)
    max_accuracy_drop: float | None = None
    runtime: str = ""  # the module its backend imports ("" for PyTorch): a missing one is said before any export
    runs_on: str = ""  # the only platform (sys.platform) its runtime exists on; "" for any
    batch: int | None = None  # the batch size fixed in the file (None: any)
    input: str = "uint8"  # what the file takes (its JSON's input dtype)
    keeps_tta: bool = True  # the run's test-time augmentation is inside the file
    names: tuple[str, str] = ("images", "probabilities")  # the file's input and output names

    @property
    def quantized(self) -> bool:
        return self.max_accuracy_drop is not None

    @property
    def runs_here(self) -> bool:
        return not self.runs_on or sys.platform == self.runs_on


PLATFORMS = {"darwin": "Apple's systems (macOS, iOS)"}  # sys.platform's names, for people
INT8_DROP = 0.01  # an INT8 model losing more than 1 point of test accuracy is written only with --force
INT8 = 1.0  # probabilities move under INT8: judged by same answers and test accuracy instead of a tolerance
CALIBRATED = "INT8 weights and activations (static, calibrated on the run's validation images)"

FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat(
        "onnx", "model.onnx", export_onnx, OnnxBackend, "export", 1e-4,
        "ONNX, run by ONNX Runtime without PyTorch", runtime="onnxruntime",
    ),
    ExportFormat(
        "torchscript", "model.torchscript.pt", export_torchscript, TorchScriptBackend, "", 1e-4,
        "TorchScript, loaded by torch.jit.load (C++ or Python) without imgclf",
    ),
    ExportFormat(
        "onnx-int8", "model.int8.onnx", export_onnx_int8, OnnxBackend, "export", INT8,
        f"ONNX with {CALIBRATED}, ONNX Runtime", max_accuracy_drop=INT8_DROP, runtime="onnxruntime",
    ),
    ExportFormat(
        "openvino", "model_openvino", export_openvino, OpenVinoBackend, "openvino", 1e-4,
        "OpenVINO IR (model.xml + model.bin), Intel's runtime for CPUs, GPUs and NPUs", runtime="openvino",
    ),
    ExportFormat(
        "openvino-int8", "model_openvino_int8", export_openvino_int8, OpenVinoBackend, "openvino", INT8,
        f"OpenVINO IR with {CALIBRATED} by NNCF", max_accuracy_drop=INT8_DROP, runtime="openvino",
    ),
    ExportFormat(
        "tflite", "model.tflite", export_tflite, TfliteBackend, "tflite", 1e-4,
        "TFLite (LiteRT) for Android and embedded Linux, converted by litert-torch", runtime="ai_edge_litert",
    ),
    ExportFormat(
        "tflite-int8", "model.int8.tflite", export_tflite_int8, TfliteBackend, "tflite", INT8,
        f"TFLite (LiteRT) with {CALIBRATED}; without test-time augmentation", max_accuracy_drop=INT8_DROP,
        runtime="ai_edge_litert", keeps_tta=False,
    ),
    ExportFormat(
        "executorch", "model.pte", export_executorch, ExecuTorchBackend, "executorch", 1e-4,
        "ExecuTorch program on its XNNPACK backend, PyTorch's runtime for phones and embedded devices",
        runtime="executorch", batch=1,
    ),
    ExportFormat(
        "coreml", "model.mlpackage", export_coreml, CoreMLBackend, "coreml", 1e-4,
        "CoreML ML Program for iOS and macOS apps (spec checked here; it runs on Apple's systems only)",
        runtime="coremltools", runs_on="darwin", batch=1, input="image (Core ML's image type: 0-255 pixels)",
        names=("image", "classLabel_probs (a dictionary by class), or probabilities for several labels per image"),
    ),
)  # fmt: skip


def export_formats() -> dict[str, ExportFormat]:
    """The formats by name, in the table's order."""
    return {f.name: f for f in FORMATS}


def format_names() -> tuple[str, ...]:
    return tuple(f.name for f in FORMATS)


def backend_names() -> tuple[str, ...]:
    """Where a forward pass can run: PyTorch itself, or an exported format's runtime."""
    return ("torch", *format_names())


def get_format(name: str) -> ExportFormat:
    found = export_formats().get(name)
    if found is None:
        raise ConfigError(f"`format` {name}: unknown; use {' or '.join(format_names())}")
    return found


# ---------------------------------------------------------------- exporting, checked


@dataclass
class ExportResult:
    path: Path  # the model file
    metadata: Path  # the JSON beside it: classes, input, preprocessing, how to decide
    format: str
    max_difference: float | None  # largest |probability difference| against PyTorch (None: not run here)
    test_images: int  # of the run's test images checked (0 for a bare checkpoint)
    random_images: int
    tolerance: float = 1e-4
    card: Path | None = None  # model_card.md beside it (None: a classifier that came from no file)
    quantization: dict[str, Any] | None = None  # a quantized format's check on the test split (QuantizedCheck)

    def summary(self) -> str:
        card = f", {self.card.name}" if self.card is not None else ""
        wrote = f"wrote {self.path} ({size_on_disk(self.path) / 1e6:.1f} MB), {self.metadata.name}{card}; "
        if self.quantization is not None:
            return wrote + QuantizedCheck(**self.quantization).summary(self.format)
        if self.max_difference is None:
            return wrote + not_run_here(get_format(self.format))
        checked = f"{self.test_images} test + {self.random_images} random images"
        return wrote + (
            f"{self.format} vs PyTorch on {checked}: largest probability difference {self.max_difference:.1e} "
            f"(limit {self.tolerance:.0e})"
        )


@dataclass
class QuantizedCheck:
    """A quantized model against PyTorch on the run's test split: the share of images given the same answer,
    and the test accuracy and macro F1 of each."""

    images: int
    agreement: float
    accuracy: float
    accuracy_pytorch: float
    macro_f1: float
    macro_f1_pytorch: float
    calibration_images: int
    mean_ap: float | None = None  # several labels per image: the threshold-free mAP of each
    mean_ap_pytorch: float | None = None

    @property
    def accuracy_drop(self) -> float:
        return self.accuracy_pytorch - self.accuracy

    def summary(self, fmt: str) -> str:
        return (
            f"{fmt} vs PyTorch on the {self.images:,} test images: the same answer for {self.agreement:.2%}; test "
            f"accuracy {self.accuracy:.4f} (PyTorch {self.accuracy_pytorch:.4f}), macro F1 {self.macro_f1:.4f} "
            f"(PyTorch {self.macro_f1_pytorch:.4f})"
            + (f", mAP {self.mean_ap:.4f} (PyTorch {self.mean_ap_pytorch:.4f})" if self.mean_ap is not None else "")
            + f"; calibrated on {self.calibration_images:,} validation and training images"
        )


def forward_in_batches(backend: Backend, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``backend``'s probabilities for a whole split, ``batch`` images a call (memory stays bounded)."""
    import torch

    return torch.cat([backend(images[i : i + batch]) for i in range(0, len(images), batch)]).float()


def same_answers(classifier: Classifier, got: torch.Tensor, expected: torch.Tensor) -> float:
    """The share of images whose answer, as the run's task decides it, is the same from both probabilities."""
    task, thresholds = classifier.task, classifier.thresholds
    return float((~task.wrong(task.decide(got, thresholds), task.decide(expected, thresholds))).float().mean())


def quantized_check(
    backend: Backend, classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, calibration_images: int
) -> QuantizedCheck:
    task, thresholds, classes = classifier.task, classifier.thresholds, list(classifier.classes)
    expected = classifier.predict_proba(images)
    got = forward_in_batches(backend, images)
    mine, theirs = task.metrics(got, labels, classes, thresholds), task.metrics(expected, labels, classes, thresholds)
    return QuantizedCheck(
        len(images),
        same_answers(classifier, got, expected),
        float(mine["accuracy"]),
        float(theirs["accuracy"]),
        float(mine["macro_f1"]),
        float(theirs["macro_f1"]),
        calibration_images,
        float(mine["mAP"]) if "mAP" in mine else None,
        float(theirs["mAP"]) if "mAP" in theirs else None,
    )


def not_run_here(row: ExportFormat) -> str:
    return (
        f"{row.name}: the converted spec checked; not run against PyTorch here: its runtime exists on "
        f"{PLATFORMS.get(row.runs_on, row.runs_on)} only"
    )


def metadata(classifier: Classifier, row: ExportFormat) -> dict[str, Any]:
    """What a program needs to feed the exported model and read its output, without imgclf."""
    spec = classifier.spec
    fmt, file = row.name, row.file
    decision = classifier.task.export_metadata(classifier.thresholds)
    return {
        "format": fmt,
        "file": file,
        "model": spec.model,
        "classes": list(spec.classes),
        "input": {
            "name": row.names[0],
            "dtype": row.input,
            "shape": [row.batch or "batch", spec.channels, spec.image_size, spec.image_size],
            "channels": "RGB" if spec.channels == 3 else "L (luma: 0.299 R + 0.587 G + 0.114 B)",
        },
        "output": {
            "name": row.names[1],
            "shape": [row.batch or "batch", len(spec.classes)],
            "activation": decision["activation"],
            "decision": decision["decision"],
        },
        "task": spec.task,
        "thresholds": decision["thresholds"],
        "preprocessing": {
            "resize": RESIZE_TEXT[spec.resize].format(size=spec.image_size),
            "resize_mode": spec.resize,
            "normalisation": "inside the model: (pixels / 255 - mean) / std",
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
        # inside the model too, as predict, evaluate, serve and the run's test metrics apply them
        "test_time_augmentation": spec.tta and row.keeps_tta,
        "temperature": spec.temperature,
        "imgclf_version": imgclf_version(),
    }


def _check_images(classifier: Classifier, test_images: torch.Tensor | None, seed: int = 0) -> torch.Tensor:
    import torch

    spec = classifier.spec
    generator = torch.Generator().manual_seed(seed)
    shape = (RANDOM_IMAGES, spec.channels, spec.image_size, spec.image_size)
    random = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return random if test_images is None else torch.cat([test_images, random])


def largest_difference(backend: Backend, classifier: Classifier, images: torch.Tensor) -> float:
    """The largest |probability difference| between ``backend`` and the PyTorch model, run on one image
    and on the whole batch (the exported batch size is dynamic: both must work)."""
    import torch

    expected = classifier.predict_proba(images)
    got = torch.cat([backend(images[:1]), backend(images[1:])]) if len(images) > 1 else backend(images)
    if got.shape != expected.shape:
        raise ExportError(f"the exported model returned shape {tuple(got.shape)}, not {tuple(expected.shape)}")
    return float((got.float() - expected).abs().max())


@dataclass
class RunData:
    """What a quantized export needs of the run's data: validation images to calibrate on, the test split to
    judge by (uint8 at the model's size, with labels)."""

    calibration: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def export_classifier(
    classifier: Classifier,
    fmt: str,
    out: str | os.PathLike,
    test_images: torch.Tensor | None = None,
    log: Log = quiet,
    run_data: RunData | None = None,
    force: bool = False,
) -> ExportResult:
    """Export ``classifier`` as ``fmt`` into the folder ``out``, then check it against PyTorch on
    ``test_images`` (uint8, the model's size) and random images; a quantized format is calibrated on and
    judged by ``run_data`` instead, and written past its accuracy limit only with ``force``."""
    import torch

    from .predict import Classifier

    row = get_format(fmt)
    if row.quantized and run_data is None:
        raise ExportError(
            f"`format` {fmt}: calibrated on the run's validation images and checked on its test split: export a run "
            "whose data is at hand, not a bare checkpoint"
        )
    source = classifier.path  # the run's checkpoint: the model card reads the run beside it
    classifier = Classifier(classifier.spec, classifier.model, torch.device("cpu"), config=classifier.config)
    path = Path(out) / row.file
    images = _check_images(classifier, test_images)
    log(f"exporting {classifier.model_name} to {fmt}")
    check, difference = None, None
    converting: dict[str, Any] = {"classes": list(classifier.classes), "activation": classifier.task.activation}
    model = classifier.inference_model()
    if row.quantized and run_data is not None:
        converting["calibration"] = run_data.calibration
    with atomic_output(path) as tmp:  # the model appears only once it has passed the check
        _failing_in_one_line(row, classifier, "convert", lambda: row.exporter(model, images[:2], tmp, **converting))
        if row.runs_here:
            backend = _failing_in_one_line(row, classifier, "load", lambda: row.backend(tmp))
            if run_data is not None and row.quantized:
                calibrated = min(len(run_data.calibration), CALIBRATION_IMAGES)
                check = _failing_in_one_line(
                    row,
                    classifier,
                    "run",
                    lambda: quantized_check(
                        backend, classifier, run_data.test_images, run_data.test_labels, calibrated
                    ),
                )
                _judge(check, row, path, force, log)
            difference = _failing_in_one_line(
                row, classifier, "run", lambda: largest_difference(backend, classifier, images)
            )
            if not difference <= row.tolerance:  # NaN fails too
                raise ExportError(
                    f"{path}: the {fmt} model's probabilities differ from PyTorch's by up to {difference:.1e}, over "
                    f"the limit of {row.tolerance:.0e}; nothing was written (report it with the model name)"
                )
    meta_path = path.with_name(path.name + ".json")
    quantization = None if check is None else asdict(check)
    meta = {**metadata(classifier, row), "max_difference": difference, "quantization": quantization}
    atomic_write_json(meta_path, meta)
    n_test = 0 if test_images is None or difference is None else len(test_images)
    card = write_model_card(source, Path(out), meta) if source is not None else None
    return ExportResult(path, meta_path, fmt, difference, n_test, RANDOM_IMAGES, row.tolerance, card, quantization)


def _failing_in_one_line(row: ExportFormat, classifier: Classifier, step: str, work: Callable[[], T]) -> T:
    """``work`` (a converter's conversion, or the converted model's first run); its own failure (an operator it
    lacks, shapes its runtime cannot plan) is one line, not a converter's traceback."""
    try:
        with converters_output_silenced(), quiet_converter():
            return work()
    except (ImgclfError, OSError):  # an OSError is the disk's: the write helper names the path and the fix
        raise
    except Exception as exc:  # noqa: BLE001  every converter and runtime fails in its own way
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ExportError(
            f"{row.file}: {row.name} could not {step} {classifier.model_name} ({exc.__class__.__name__}: {detail}); "
            "nothing was written; export to onnx instead, and report it with the model name"
        ) from None


def _judge(check: QuantizedCheck, row: ExportFormat, path: Path, force: bool, log: Log) -> None:
    """A quantized model that loses more test accuracy than its format allows is not written, unless forced."""
    assert row.max_accuracy_drop is not None
    if check.accuracy_drop <= row.max_accuracy_drop:
        return
    loss = (
        f"{path}: {row.name} loses {100 * check.accuracy_drop:.1f} points of test accuracy ({check.accuracy_pytorch:.4f} "
        f"-> {check.accuracy:.4f}, {check.images:,} test images), over the limit of {100 * row.max_accuracy_drop:g}"
    )
    if not force:
        raise ExportError(f"{loss}; nothing was written (`force` writes it anyway)")
    log(f"warning: {loss}; written because of `force`")


def run_test_images(path: str | os.PathLike) -> torch.Tensor | None:
    """The test images a run keeps (its most confident mistakes and some right answers), or None."""
    try:
        return RunDir.find(path).read_predictions().example_images
    except CheckpointError:
        return None


def export_folder(path: str | os.PathLike) -> Path:
    """Where a run's (or a checkpoint's) exports go: the run's export/ folder."""
    checkpoint = RunDir.checkpoint_path(path)
    return RunDir(checkpoint.parent).output("export", EXPORT)


def export(
    path: str | os.PathLike,
    fmt: str = "onnx",
    out: str | os.PathLike | None = None,
    log: Log = quiet,
    force: bool = False,
) -> ExportResult:
    """Export a run (its best.pt) or a checkpoint; ``out`` defaults to the run's ``export/`` folder. A quantized
    format loads the run's data: its validation images calibrate, its test split judges."""
    from .predict import load

    row = get_format(fmt)  # an unknown format is one line before the model loads
    classifier = load(path, device="cpu")
    folder = Path(out) if out else export_folder(path)
    test_images = run_test_images(path) if Path(path).is_dir() else None
    run_data = _run_data(classifier, path, log) if row.quantized else None
    return export_classifier(classifier, fmt, folder, test_images, log, run_data, force)


def calibration_images(dataset: Any) -> torch.Tensor:
    """What an INT8 export calibrates on: the validation images, filled up to CALIBRATION_IMAGES with training
    images spread evenly over that split (never the test split, which judges it)."""
    import torch

    wanted = max(CALIBRATION_IMAGES - len(dataset.val), 0)
    train = dataset.train.images
    step = max(len(train) // wanted, 1) if wanted else len(train) + 1
    return torch.cat([dataset.val.images, train[::step][:wanted]])


def _run_data(classifier: Classifier, path: str | os.PathLike, log: Log) -> RunData:
    from .evaluate import checkpoint_data  # deferred: the data loaders, for quantized formats alone

    _, dataset = checkpoint_data(classifier, classifier.path or path)
    calibration = calibration_images(dataset)
    log(
        f"calibrating on {len(calibration):,} images ({min(len(dataset.val), len(calibration)):,} validation, the rest "
        f"training), judging on {len(dataset.test):,} test images"
    )
    return RunData(calibration, dataset.test.images, dataset.test.labels)


def exported_backend(path: str | os.PathLike, fmt: str, log: Log = quiet) -> Backend:
    """The run's exported ``fmt`` model as a backend for ``predict``, exported first when it is missing
    or older than the checkpoint."""
    row = get_format(fmt)
    checkpoint = RunDir.checkpoint_path(path)
    model_file = export_folder(path) / row.file
    meta_file = model_file.with_name(model_file.name + ".json")
    if not meta_file.is_file() or meta_file.stat().st_mtime < checkpoint.stat().st_mtime:  # written after the model
        log(export(path, fmt, log=log).summary())
    try:
        return row.backend(model_file)
    except ImgclfError:
        raise
    except Exception as exc:  # noqa: BLE001  each runtime has its own errors for a damaged or foreign file
        raise CheckpointError(
            f"{model_file}: not a {fmt} model this runtime can load ({exc.__class__.__name__}); export it again "
            f"(delete it, or run `imgclf export {path} --format {fmt}`)"
        ) from None
