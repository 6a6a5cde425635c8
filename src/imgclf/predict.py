"""Inference from a checkpoint: ``imgclf.load(path).predict(images)``.

This module imports the run directory's format, the model registry and the image decoder, and nothing
of training: an exporter or a web server built on it carries neither the trainer nor its optimisers.
What runs is :class:`InferenceModel`, the network with its preprocessing in one ``nn.Module`` (uint8
pixels in, probabilities out), so an exporter can export exactly the graph that predicts.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .config import DEFAULT_MAX_IMAGE_PIXELS, PREDICT_BATCH, DecodeSpec
from .data.images import describe_skip, find_images, read_image, stream_images
from .errors import CheckpointError, ConfigError, DataError
from .models import create_model
from .rundir import CHANGES_INFERENCE, Checkpoint, InferenceSpec, RunDir, read_checkpoint
from .runtime import resolve_device
from .tasks import UNKNOWN as UNKNOWN  # re-exported: the label of an answer below `min_confidence`
from .tasks import Prediction, Task, get_task
from .writers import Columns, write_predictions

ImageInput = str | os.PathLike | Image.Image | torch.Tensor


def _mirrored_logits(network: nn.Module, x: torch.Tensor, hflip: bool) -> torch.Tensor:
    logits = network(x).float()
    return 0.5 * (logits + network(x.flip(-1)).float()) if hflip else logits


def _reflect_pad_1(x: torch.Tensor) -> torch.Tensor:
    """F.pad(x, (1, 1, 1, 1), mode="reflect") from slices and concatenations: the same numbers, and ops every
    export runtime has (ExecuTorch's runtime fails on the gather that reflection padding is lowered to)."""
    x = torch.cat([x[..., 1:2, :], x, x[..., -2:-1, :]], dim=-2)
    return torch.cat([x[..., 1:2], x, x[..., -2:-1]], dim=-1)


def tta_logits(network: nn.Module, x: torch.Tensor, hflip: bool) -> torch.Tensor:
    """Test-time augmentation as in the airbench recipes: the image (and its mirror, where a flip keeps
    the label) weighs half; the two 1-pixel diagonal shifts (mirrored borders) a quarter each."""
    padded = _reflect_pad_1(x)
    shifted = [padded[..., :-2, :-2], padded[..., 2:, 2:]]  # no shape read: a traced size is an op CoreML lacks
    shifted_logits = sum(
        _mirrored_logits(network, s.contiguous(memory_format=torch.channels_last), hflip) for s in shifted
    )
    return 0.5 * _mirrored_logits(network, x, hflip) + 0.25 * shifted_logits


UNKNOWN_SCORES = ("probability", "familiarity")  # what `min_confidence` is compared with (evaluate --negatives)


@dataclass
class Novelty:
    """How familiar an image is: the cosine distance of its embedding (the class layer's input) to its k-th
    nearest training image's (Sun et al., "Out-of-distribution detection with deep nearest neighbors", 2022),
    read as the share of real held-out images at least as far: 1 for the closest, 0.05 where only 5% of real
    images are farther. ``evaluate --negatives`` measures it against the probability on the user's own
    unrelated images, and makes it what ``min_confidence`` reads where it rejects more of them."""

    reference: torch.Tensor  # M x D training embeddings, unit length
    k: int
    real: torch.Tensor  # the k-NN distances of real held-out images, sorted

    @staticmethod
    def unit(features: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.as_tensor(features).float(), dim=1)

    def distances(self, features: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Each row's cosine distance to its k-th nearest reference embedding."""
        unit = self.unit(features)
        out = [
            1 - (unit[i : i + chunk] @ self.reference.T).topk(min(self.k, len(self.reference)), dim=1).values[:, -1]
            for i in range(0, len(unit), chunk)
        ]
        return torch.cat(out) if out else torch.zeros(0)

    def familiarity(self, features: torch.Tensor) -> torch.Tensor:
        """The share of real held-out images at least as far from the training images (0..1)."""
        farther = len(self.real) - torch.searchsorted(self.real, self.distances(features), side="left")
        return farther.float() / max(1, len(self.real))


def check_min_confidence(value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"`min_confidence` {value} must be a probability between 0 and 1 (e.g. 0.8)")


class InferenceModel(nn.Module):
    """A trained network with its preprocessing: uint8 images N x C x H x W at the model's size in, class
    probabilities N x classes out, as the run's task makes them (a softmax over the classes, a sigmoid per
    class). ``tta`` adds the test-time augmented views the run's test metrics used."""

    mean: torch.Tensor  # 1 x C x 1 x 1 buffers: they move with the module and are part of an exported graph
    std: torch.Tensor

    def __init__(
        self,
        network: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        tta: bool = False,
        hflip: bool = False,
        temperature: float = 1.0,
        task: Task | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.task = task or get_task("single_label")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.tta, self.hflip, self.temperature = tta, hflip, float(temperature)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels as the network's input; the same operations, in the same order, as training's batches."""
        x = images.float() / 255  # not in place: a float input is the caller's tensor
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalise(images)
        logits = tta_logits(self.network, x, self.hflip) if self.tta else self.network(x).float()
        logits = logits / self.temperature  # calibrated: the run's fitted temperature
        return self.task.probabilities(logits)


class Predictions(list[Prediction]):
    """The predictions, in input order, and the files inside given folders that were skipped, with why;
    ``save("p.csv")`` writes them as ``imgclf predict --out`` does (the columns their run's task gives)."""

    def __init__(
        self,
        predictions: Sequence[Prediction] = (),
        skipped: Sequence[tuple[str, str]] = (),
        columns: Columns | None = None,
    ) -> None:
        super().__init__(predictions)
        self.skipped = list(skipped)
        self.columns = columns

    def save(self, path: str | os.PathLike, format: str | None = None) -> Path:
        """The predictions as a CSV or JSON file (by ``format``, else ``path``'s suffix), written atomically."""
        columns = self.columns or Columns(get_task("single_label"), max((len(p.top_k) for p in self), default=1))
        write_predictions(self, columns, path, format)
        return Path(path)


def model_from_checkpoint(checkpoint: Checkpoint) -> nn.Module:
    """Rebuild the network a checkpoint describes and load its weights, checking that they fit."""
    spec = checkpoint.spec
    model = create_model(spec.model, spec.channels, len(spec.classes), spec.image_size, **spec.model_args)
    try:
        model.load_state_dict(checkpoint.state_dict)
    except RuntimeError as exc:
        first = str(exc).split("\n\t", 2)[1] if "\n\t" in str(exc) else str(exc)[:150]
        raise CheckpointError(
            f"{checkpoint.path or 'checkpoint'}: weights do not fit model {spec.model} ({first.strip()}); "
            "the file is damaged or from another model"
        ) from None
    return model.eval()


class Classifier:
    """A trained model with everything inference needs: classes, image size, channels, normalisation."""

    def __init__(
        self,
        spec: InferenceSpec,
        network: nn.Module,
        device: torch.device,
        *,
        config: dict[str, Any] | None = None,
        path: Path | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.spec = spec
        self.config: dict[str, Any] = config or {}  # the training settings of the run
        self.path = path  # the checkpoint file, when loaded from one
        self.device = device
        self.max_image_pixels = max_image_pixels
        self.model = network.to(device).to(memory_format=torch.channels_last).eval()
        # another engine for the run's forward pass: an exported model (see imgclf.export)
        self.backend: Callable[[torch.Tensor], torch.Tensor] | None = None
        # "unknown" by distance to the training images, where `evaluate --negatives` found it better
        self.novelty: Novelty | None = None
        # what a command run after training changed in how this run predicts (rundir.CHANGES_INFERENCE)
        self.changed_by: dict[str, str] = {}
        # one threshold for every class instead of the run's per-class ones (--threshold), where the task has them
        self.threshold: float | None = None
        # two views of one network, sharing its weights: plain, and with the run's test-time augmentation
        self.modules = {
            tta: InferenceModel(
                self.model,
                spec.mean,
                spec.std,
                tta=tta,
                hflip=spec.hflip,
                temperature=spec.temperature,
                task=self.task,
            ).to(device)
            for tta in (False, True)
        }

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, device: torch.device, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ) -> Classifier:
        return cls(
            checkpoint.spec,
            model_from_checkpoint(checkpoint),
            device,
            config=checkpoint.config,
            path=checkpoint.path,
            max_image_pixels=max_image_pixels,
        )

    @property
    def classes(self) -> list[str]:
        return self.spec.classes

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    @property
    def task(self) -> Task:
        """The run's task (:mod:`imgclf.tasks`): its metrics, its loss, how a probability becomes an answer."""
        return get_task(self.spec.task)

    @property
    def thresholds(self) -> list[float] | None:
        """The probability from which each class is predicted (the run's, or ``threshold``), where the run's task
        decides by thresholds (several labels per image); None where it does not."""
        return self.spec.decision_thresholds(self.threshold)

    def set_threshold(self, threshold: float | None) -> None:
        """One threshold for every class, where the task decides by thresholds (None: the run's own, chosen on
        validation)."""
        if threshold is not None:
            self.task.check("threshold")
        if threshold is not None and not 0 < threshold < 1:
            raise ConfigError(f"`threshold` {threshold} must be a probability between 0 and 1 (e.g. 0.5)")
        self.threshold = threshold

    @property
    def channels(self) -> int:
        return self.spec.channels

    @property
    def model_name(self) -> str:
        return self.spec.model

    def __repr__(self) -> str:
        views = ", test-time augmentation" if self.tta else ""
        changed = "".join(f", {what} ({command})" for command, what in self.changed_by.items())
        shape = f"{self.channels}x{self.image_size}x{self.image_size}"
        return f"Classifier({self.model_name}, {len(self.classes)} classes, {shape}{views}{changed})"

    @property
    def tta(self) -> bool:
        """Whether this run predicts with test-time augmentation: then everywhere (predict, evaluate, explain,
        errors, the report, serve and export), as its test metrics did."""
        return self.spec.tta

    def inference_model(self, tta: bool | None = None) -> InferenceModel:
        """The ``nn.Module`` that predicts: uint8 images in, probabilities out (``tta``: default the run's)."""
        return self.modules[self.tta if tta is None else tta]

    def to_uint8(self, item: ImageInput) -> torch.Tensor:
        """One image as the model's uint8 C x H x W input (resized, cropped, channels converted)."""
        if isinstance(item, torch.Tensor):  # C x H x W, uint8 or float in 0..1
            image = item if item.dtype == torch.uint8 else (item.float().clamp(0, 1) * 255).round().to(torch.uint8)
            array = image.permute(1, 2, 0).numpy()
            item = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        return read_image(item, self.decode_spec, self.channels)

    @property
    def decode_spec(self) -> DecodeSpec:
        """How an image file becomes this model's input: its size, its run's fitting, the pixel limit."""
        return DecodeSpec(self.image_size, self.spec.resize, self.max_image_pixels)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 N x C x H x W batch as the network's input: float, normalised, on its device."""
        return self.modules[False].normalise(images.to(self.device))

    @torch.inference_mode()
    def predict_proba(
        self, images: torch.Tensor, batch_size: int = PREDICT_BATCH, tta: bool | None = None
    ) -> torch.Tensor:
        """Probabilities for a uint8 N x C x H x W batch already at the model's size and channels. ``tta``
        (default: the run's) averages flipped and shifted views; an exported backend computes the same."""
        tta = self.tta if tta is None else tta
        module = self.modules[tta].eval()
        use_backend = self.backend is not None and tta == self.tta  # an export holds the run's own forward
        run = self.backend if use_backend else lambda x: module(x.to(self.device))
        assert run is not None
        chunks = [run(images[i : i + batch_size]).cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.classes))

    def batches(self, plan: InputPlan, batch_size: int = PREDICT_BATCH) -> Iterator[DecodedInputs]:
        """The planned inputs decoded batch by batch (files in threads, a few batches ahead): memory holds
        a few batches whatever the number of files. A named file that is not a usable image is an error;
        a folder's unusable files are skipped, with the reason."""
        for files, named, in_memory in plan.segments:
            if in_memory:
                for start in range(0, len(in_memory), batch_size):
                    chunk = in_memory[start : start + batch_size]
                    sources = [f"<{type(item).__name__} {start + i}>" for i, item in enumerate(chunk)]
                    yield DecodedInputs(sources, torch.stack([self.to_uint8(item) for item in chunk]), [])
                continue
            for batch in stream_images(files, self.decode_spec, self.channels, batch_size):
                for file, reason in batch.skipped:
                    if file in named:
                        raise DataError(f"{file}: {describe_skip(reason)}")
                yield DecodedInputs([str(f) for f in batch.files], batch.images, batch.skipped)

    def read_images(
        self, images: ImageInput | Sequence[ImageInput]
    ) -> tuple[list[str], torch.Tensor, list[tuple[str, str]]]:
        """Files, folders (their visible files, as training finds them), PIL images or image tensors as
        (sources, uint8 N x C x H x W, files inside folders skipped with the reason), all in memory."""
        plan = InputPlan.of(images)
        decoded = list(self.batches(plan))
        sources = [source for part in decoded for source in part.sources]
        if not sources:
            raise plan.nothing_readable()
        return sources, torch.cat([part.images for part in decoded]), [s for part in decoded for s in part.skipped]

    @property
    def unknown_score(self) -> str:
        """What ``min_confidence`` is compared with: the calibrated top probability, or the familiarity."""
        return "familiarity" if self.novelty is not None else "probability"

    def features(self, images: torch.Tensor, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
        """N x D embeddings of uint8 images at the model's size: the input of the network's class layer."""
        from .data.features import compute_features

        chunks = [
            compute_features(self.model, images[i : i + batch_size], self.spec.mean, self.spec.std, self.device)
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(chunks) if chunks else torch.zeros(0, 0)

    def unknown_scores(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Per image, the score ``min_confidence`` is compared with (see :attr:`unknown_score`)."""
        if self.novelty is None:
            return probs.max(1).values
        return self.novelty.familiarity(self.features(images))

    def top_k(
        self,
        sources: Sequence[str],
        probs: torch.Tensor,
        k: int,
        min_confidence: float = 0.0,
        scores: torch.Tensor | None = None,
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Each image's answer, as the run's task decides it, with its ``k`` most likely classes: one label per
        image is ``unknown`` where its score (``scores``, default the calibrated top probability) is below
        ``min_confidence``; several are every class at or over its threshold (``threshold``: one for all)."""
        thresholds = self.spec.decision_thresholds(self.threshold if threshold is None else threshold)
        return self.task.answers(sources, probs, self.classes, k, thresholds, min_confidence, scores)

    def stream(
        self,
        images: ImageInput | Sequence[ImageInput],
        top_k: int = 1,
        batch_size: int = PREDICT_BATCH,
        min_confidence: float = 0.0,
    ) -> PredictionStream:
        """Predictions as they are made, for folders of any size: iterate the result."""
        check_min_confidence(min_confidence)
        if min_confidence > 0:
            self.task.check("min_confidence")
        return PredictionStream(self, InputPlan.of(images), top_k, batch_size, min_confidence)

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        top_k: int = 1,
        batch_size: int = PREDICT_BATCH,
        min_confidence: float = 0.0,
    ) -> Predictions:
        """Predict files, folders (all images inside), PIL images or image tensors; ``unknown`` below
        ``min_confidence``."""
        stream = self.stream(images, top_k, batch_size, min_confidence)
        k = max(1, min(top_k, len(self.classes)))
        return Predictions(list(stream), stream.skipped, Columns(self.task, k, min_confidence))


@dataclass
class DecodedInputs:
    sources: list[str]
    images: torch.Tensor  # N x C x H x W uint8 at the model's size
    skipped: list[tuple[str, str]]  # files inside folders that are not usable images, with the reason


@dataclass
class InputPlan:
    """What to predict, listed before any decoding: runs of files (with the named ones, which must be
    images) and runs of in-memory images, in the order given. Missing files are an error up front."""

    given: list[ImageInput]
    segments: list[tuple[list[Path], set[str], list[ImageInput]]]

    @classmethod
    def of(cls, images: ImageInput | Sequence[ImageInput]) -> InputPlan:
        given: list[ImageInput] = (
            [images] if isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor)) else list(images)
        )
        segments: list[tuple[list[Path], set[str], list[ImageInput]]] = []
        for is_path, group in itertools.groupby(given, key=lambda item: isinstance(item, (str, os.PathLike))):
            items = list(group)
            if not is_path:
                segments.append(([], set(), items))
                continue
            files: list[Path] = []
            named: set[str] = set()
            for item in (Path(path) for path in items if isinstance(path, (str, os.PathLike))):
                if item.is_dir():
                    files += find_images([item])
                elif item.is_file():
                    files.append(item)
                    named.add(str(item))
                else:
                    raise DataError(f"{item}: no such file; check the path")
            segments.append((files, named, []))
        return cls(given, segments)

    @property
    def total(self) -> int:
        return sum(len(files) + len(in_memory) for files, _, in_memory in self.segments)

    def nothing_readable(self) -> DataError:
        return DataError(
            f"no readable images in {', '.join(map(str, self.given))}; give image files or folders of them"
        )


class PredictionStream:
    """Iterating it predicts batch by batch; ``skipped`` grows as folders' unusable files are met, and
    ``total`` (the number of inputs, known up front) lets a caller show progress."""

    def __init__(
        self, classifier: Classifier, plan: InputPlan, top_k: int, batch_size: int, min_confidence: float = 0.0
    ) -> None:
        self.classifier, self.plan, self.top_k, self.batch_size = classifier, plan, top_k, batch_size
        self.min_confidence = min_confidence
        self.total = plan.total
        self.skipped: list[tuple[str, str]] = []

    def __iter__(self) -> Iterator[Prediction]:
        predicted = 0
        for part in self.classifier.batches(self.plan, self.batch_size):
            self.skipped += part.skipped
            if part.sources:
                probs = self.classifier.predict_proba(part.images, self.batch_size)
                scores = self.classifier.unknown_scores(part.images, probs) if self.min_confidence > 0 else None
                yield from self.classifier.top_k(part.sources, probs, self.top_k, self.min_confidence, scores)
                predicted += len(part.sources)
        if not predicted:
            raise self.plan.nothing_readable()


def load(path: str | os.PathLike, device: str = "auto", max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Classifier:
    """Load a run directory (its best.pt) or a checkpoint file for inference; a run where `evaluate
    --negatives` found the distance to the training images better says `unknown` by it."""
    classifier = Classifier.from_checkpoint(
        read_checkpoint(RunDir.checkpoint_path(path)), resolve_device(device), max_image_pixels
    )
    found = RunDir(path).read_unknown() if Path(path).is_dir() else None
    if found is not None and found[0].get("chosen") == "familiarity":
        unknown, reference = found
        classifier.changed_by["evaluate --negatives"] = CHANGES_INFERENCE["evaluate --negatives"]
        classifier.novelty = Novelty(
            Novelty.unit(torch.from_numpy(reference.astype("float32"))),
            int(unknown["k"]),
            torch.tensor(unknown["real_distances"], dtype=torch.float32).sort().values,
        )
    return classifier
