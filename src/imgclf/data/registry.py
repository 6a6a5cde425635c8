"""The dataset registry: adding a dataset is one decorated function (as timm does for models).

A source function takes the run's config and returns a :class:`RawDataset`: uint8 image tensors and
integer labels, with a test split where the source defines one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import DataError


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    sources: list[str] | None = None  # each image's file, for folder and CSV data

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        sources = [self.sources[i] for i in index.tolist()] if self.sources is not None else None
        return Split(self.images[index], self.labels[index], sources)


@dataclass
class RawDataset:
    classes: list[str]
    train: Split
    test: Split | None = None
    val: Split | None = None
    hflip: bool = True  # whether a horizontal flip keeps the label (not for digits)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    from_cache: bool = False  # decoded images came from the decode cache


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[..., RawDataset]
    description: str


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, description: str) -> Callable:
    """Decorator: ``@register_dataset("mnist", "...")`` on ``def load(config) -> RawDataset``."""

    def decorator(fn: Callable[..., RawDataset]) -> Callable[..., RawDataset]:
        _DATASETS[name] = DatasetSpec(name, fn, description)
        return fn

    return decorator


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def list_datasets() -> list[DatasetSpec]:
    return [_DATASETS[name] for name in dataset_names()]


def get_dataset(name: str) -> DatasetSpec:
    try:
        return _DATASETS[name.lower()]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}: use one of {', '.join(dataset_names())}, "
            "a folder with one sub-folder per class, or a CSV of file,label"
        ) from None
