"""A trained model out of imgclf: ONNX (runs under ONNX Runtime, without PyTorch) or TorchScript.

What is exported is :class:`imgclf.predict.InferenceModel`, the graph that ``predict`` runs: uint8
pixels N x C x H x W in (any N), class probabilities out, the normalisation, the calibration and the
run's test-time augmentation (where it has one) inside. What a consumer
must do before it (decode, resize the shorter side, centre-crop, channels) and the class names are in
a JSON file beside the model. After writing, the exported model is run on the run's test images and
on random images and compared with PyTorch: above :data:`PARITY_TOLERANCE` the export fails and
nothing is left on disk.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError, ExportError
from .fsutil import atomic_path, atomic_write_json
from .predict import Classifier, OnnxBackend, load
from .rundir import EXPORT, EXPORT_FILES, RunDir
from .runtime import Log, quiet

FORMATS = tuple(EXPORT_FILES)
PARITY_TOLERANCE = 1e-4  # largest absolute difference of a probability between exported and PyTorch model
RANDOM_IMAGES = 16  # random uint8 images checked besides the run's test images
ONNX_OPSET = 18
Backend = Callable[[torch.Tensor], torch.Tensor]

# how predict, serve and the run's own test metrics fitted an image to the square, for a user of the export
RESIZE_TEXT = {
    "crop": "shorter side to {size} px (bilinear, antialiased), then centre crop to {size}x{size}",
    "pad": "longer side to {size} px (bilinear, antialiased), then pad with black to {size}x{size}, centred",
    "stretch": "both sides to {size} px (bilinear, antialiased), the aspect ratio not kept",
}


@dataclass
class ExportResult:
    path: Path  # the model file
    metadata: Path  # the JSON beside it: classes, input, preprocessing
    format: str
    max_difference: float  # largest |probability difference| against PyTorch over the checked images
    test_images: int  # of the run's test images checked (0 for a bare checkpoint)
    random_images: int

    def summary(self) -> str:
        checked = f"{self.test_images} test + {self.random_images} random images"
        return (
            f"wrote {self.path} ({self.path.stat().st_size / 1e6:.1f} MB) and {self.metadata.name}; "
            f"{self.format} vs PyTorch on {checked}: largest probability difference {self.max_difference:.1e} "
            f"(limit {PARITY_TOLERANCE:.0e})"
        )


def metadata(classifier: Classifier, fmt: str, file: str) -> dict[str, Any]:
    """What a program needs to feed the exported model and read its output, without imgclf."""
    spec = classifier.spec
    return {
        "format": fmt,
        "file": file,
        "model": spec.model,
        "classes": list(spec.classes),
        "input": {
            "name": "images",
            "dtype": "uint8",
            "shape": ["batch", spec.channels, spec.image_size, spec.image_size],
            "channels": "RGB" if spec.channels == 3 else "L (luma: 0.299 R + 0.587 G + 0.114 B)",
        },
        "output": {
            "name": "probabilities",
            "shape": ["batch", len(spec.classes)],
            # multi-label: a sigmoid per class, each class predicted from its threshold on; else a softmax
            "activation": "sigmoid" if spec.multi_label else "softmax",
            "decision": "every class with probability >= its threshold"
            if spec.multi_label
            else "the most probable class",
        },
        "task": spec.task,
        "thresholds": classifier.thresholds if spec.multi_label else None,
        "preprocessing": {
            "resize": RESIZE_TEXT[spec.resize].format(size=spec.image_size),
            "resize_mode": spec.resize,
            "normalisation": "inside the model: (pixels / 255 - mean) / std",
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
        # inside the model too, as predict, evaluate, serve and the run's test metrics apply them
        "test_time_augmentation": spec.tta,
        "temperature": spec.temperature,
        "imgclf_version": __import__("imgclf").__version__,
    }


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  torch's ONNX exporter needs it; checked first for a clear message
    except ImportError:
        raise ExportError("ONNX export needs onnx and onnxscript: pip install 'imgclf[export]'") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress notes and upstream deprecations
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes={"images": {0: batch}},
            opset_version=ONNX_OPSET,
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program; update PyTorch (2.5 or newer)")
    program.save(str(path))


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # TorchScript is deprecated upstream in favour of torch.export; still loads everywhere
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))


class TorchScriptBackend:
    """A TorchScript file loaded for inference: uint8 batch in, probabilities out."""

    def __init__(self, path: str | os.PathLike) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)


EXPORTERS: dict[str, tuple[Callable[[torch.nn.Module, torch.Tensor, Path], None], Callable[[Path], Backend]]] = {
    "onnx": (_export_onnx, OnnxBackend),
    "torchscript": (_export_torchscript, TorchScriptBackend),
}


def _check_images(classifier: Classifier, test_images: torch.Tensor | None, seed: int = 0) -> torch.Tensor:
    spec = classifier.spec
    generator = torch.Generator().manual_seed(seed)
    shape = (RANDOM_IMAGES, spec.channels, spec.image_size, spec.image_size)
    random = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return random if test_images is None else torch.cat([test_images, random])


def largest_difference(backend: Backend, classifier: Classifier, images: torch.Tensor) -> float:
    """The largest |probability difference| between ``backend`` and the PyTorch model, run on one image
    and on the whole batch (the exported batch size is dynamic: both must work)."""
    expected = classifier.predict_proba(images)
    got = torch.cat([backend(images[:1]), backend(images[1:])]) if len(images) > 1 else backend(images)
    if got.shape != expected.shape:
        raise ExportError(f"the exported model returned shape {tuple(got.shape)}, not {tuple(expected.shape)}")
    return float((got.float() - expected).abs().max())


def export_classifier(
    classifier: Classifier,
    fmt: str,
    out: str | os.PathLike,
    test_images: torch.Tensor | None = None,
    log: Log = quiet,
) -> ExportResult:
    """Export ``classifier`` as ``fmt`` into the folder ``out``, then check it against PyTorch on
    ``test_images`` (uint8, the model's size) and random images."""
    if fmt not in EXPORTERS:
        raise ConfigError(f"`format` {fmt}: unknown; use {' or '.join(FORMATS)}")
    classifier = Classifier(classifier.spec, classifier.model, torch.device("cpu"), config=classifier.config)
    exporter, backend_type = EXPORTERS[fmt]
    path = Path(out) / EXPORT_FILES[fmt]
    images = _check_images(classifier, test_images)
    log(f"exporting {classifier.model_name} to {fmt}")
    with atomic_path(path) as tmp:  # the model file appears only once it has passed the check
        exporter(classifier.inference_model(), images[:2], tmp)
        difference = largest_difference(backend_type(tmp), classifier, images)
        if not difference <= PARITY_TOLERANCE:  # NaN fails too
            raise ExportError(
                f"{path}: the {fmt} model's probabilities differ from PyTorch's by up to {difference:.1e}, over the "
                f"limit of {PARITY_TOLERANCE:.0e}; nothing was written (report it with the model name)"
            )
    meta_path = path.with_name(path.name + ".json")
    atomic_write_json(meta_path, {**metadata(classifier, fmt, path.name), "max_difference": difference})
    n_test = 0 if test_images is None else len(test_images)
    return ExportResult(path, meta_path, fmt, difference, n_test, RANDOM_IMAGES)


def run_test_images(path: str | os.PathLike) -> torch.Tensor | None:
    """The test images a run keeps (its most confident mistakes and some right answers), or None."""
    try:
        return RunDir.find(path).read_predictions().example_images
    except CheckpointError:
        return None


def export(
    path: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None, log: Log = quiet
) -> ExportResult:
    """Export a run (its best.pt) or a checkpoint; ``out`` defaults to the run's ``export/`` folder."""
    classifier = load(path, device="cpu")
    folder = Path(out) if out else RunDir.checkpoint_path(path).parent / EXPORT
    test_images = run_test_images(path) if Path(path).is_dir() else None
    return export_classifier(classifier, fmt, folder, test_images, log)


def exported_backend(path: str | os.PathLike, fmt: str, log: Log = quiet) -> Backend:
    """The run's exported ``fmt`` model as a backend for ``predict``, exported first when it is missing
    or older than the checkpoint."""
    checkpoint = RunDir.checkpoint_path(path)
    model_file = checkpoint.parent / EXPORT / EXPORT_FILES[fmt]
    meta_file = model_file.with_name(model_file.name + ".json")
    if not meta_file.is_file() or meta_file.stat().st_mtime < checkpoint.stat().st_mtime:  # written after the model
        log(export(path, fmt, log=log).summary())
    return EXPORTERS[fmt][1](model_file)
