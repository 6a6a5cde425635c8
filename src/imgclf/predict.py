"""Inference from a checkpoint: ``imgclf.load(path).predict(images)``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image
from torch import nn

from .data import BatchIterator, Split, find_images, normalise, read_image
from .data.images import decode_images
from .errors import CheckpointError, DataError
from .evaluate import predict_batches
from .models import create_model
from .runtime import resolve_device
from .train import read_checkpoint

ImageInput = Union[str, os.PathLike, Image.Image, torch.Tensor]


@dataclass
class Prediction:
    source: str
    label: str
    probability: float
    top_k: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "label": self.label, "probability": self.probability,
                "top_k": [{"label": lbl, "probability": p} for lbl, p in self.top_k]}


def model_from_checkpoint(payload: dict[str, Any], source: str | os.PathLike = "checkpoint") -> nn.Module:
    """Rebuild the network a checkpoint describes and load its weights, checking that they fit."""
    spec = payload["model"]
    model = create_model(spec["name"], payload["channels"], len(payload["classes"]), payload["image_size"], **spec.get("kwargs", {}))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).split("\n\t", 2)[1] if "\n\t" in str(exc) else str(exc)[:150]
        raise CheckpointError(f"{source}: weights do not fit model {spec['name']} ({first.strip()}); the file is damaged or from another model") from None
    return model.eval()


class Classifier:
    """A trained model with everything inference needs: classes, image size, channels, normalisation."""

    def __init__(self, model: nn.Module, payload: dict[str, Any], device: torch.device, path: Path | None = None):
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.device = device
        self.path = path
        self.classes: list[str] = list(payload["classes"])
        self.image_size: int = payload["image_size"]
        self.channels: int = payload["channels"]
        self.mean: list[float] = list(payload["mean"])
        self.std: list[float] = list(payload["std"])
        self.hflip: bool = payload.get("hflip", False)
        self.model_name: str = payload["model"]["name"]
        self.config: dict[str, Any] = payload.get("config", {})

    def __repr__(self) -> str:
        return f"Classifier({self.model_name}, {len(self.classes)} classes, {self.channels}x{self.image_size}x{self.image_size})"

    def to_uint8(self, item: ImageInput) -> torch.Tensor:
        """One image as the model's uint8 C x H x W input (resized, cropped, channels converted)."""
        if isinstance(item, torch.Tensor):  # C x H x W, uint8 or float in 0..1
            image = item if item.dtype == torch.uint8 else (item.float().clamp(0, 1) * 255).round().to(torch.uint8)
            array = image.permute(1, 2, 0).numpy()
            item = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        return read_image(item, self.image_size, self.channels)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 N x C x H x W batch as the network's input: float, normalised, on its device."""
        return normalise(images, self.mean, self.std, self.device).contiguous(memory_format=torch.channels_last)

    def predict_proba(self, images: torch.Tensor, batch_size: int = 256, tta: bool = False) -> torch.Tensor:
        """Probabilities for a uint8 N x C x H x W batch already at the model's size and channels
        (``tta``: average over flipped and shifted views, as the run's test metrics did)."""
        batches = BatchIterator(Split(images, torch.zeros(len(images), dtype=torch.long)), batch_size, self.device,
                                self.mean, self.std, channels_last=True)
        probs, _ = predict_batches(self.model, batches, tta=tta, hflip=self.hflip)
        return probs

    def read_images(self, images: ImageInput | Sequence[ImageInput]) -> tuple[list[str], torch.Tensor]:
        """Files, folders (all images inside), PIL images or image tensors as (sources, uint8 N x C x H x W)."""
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        sources, tensors = [], []
        for item in items:
            if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
                files = find_images([item])
                decoded, kept, skipped, _ = decode_images(files, self.image_size, self.channels)
                for path, reason in skipped:
                    print(f"warning: skipped {path}: {reason}")
                sources += [str(files[i]) for i in kept]
                tensors += list(decoded)
            else:
                sources.append(str(item) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__} {len(sources)}>")
                tensors.append(self.to_uint8(item))
        if not tensors:
            raise DataError(f"no readable images in {', '.join(map(str, items))}; give image files or folders of them")
        return sources, torch.stack(tensors)

    def predict(self, images: ImageInput | Sequence[ImageInput], top_k: int = 1, batch_size: int = 256) -> list[Prediction]:
        """Predict files, folders (all images inside), PIL images or image tensors."""
        sources, batch = self.read_images(images)
        probs = self.predict_proba(batch, batch_size)
        k = max(1, min(top_k, len(self.classes)))
        values, indices = probs.topk(k, dim=1)
        return [
            Prediction(src, self.classes[idx[0]], val[0], [(self.classes[i], v) for v, i in zip(val, idx)])
            for src, val, idx in zip(sources, values.tolist(), indices.tolist())
        ]


def load(path: str | os.PathLike, device: str = "auto") -> Classifier:
    """Load a run directory (its best.pt) or a checkpoint file for inference."""
    payload = read_checkpoint(path)
    source = Path(path) / "best.pt" if Path(path).is_dir() else Path(path)
    return Classifier(model_from_checkpoint(payload, source), payload, resolve_device(device), source)
