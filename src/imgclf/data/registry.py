"""The dataset registry: adding a dataset is one decorated function (as timm does for models).

A source function takes the run's data config (:class:`~imgclf.config.DataConfig`) and returns a :class:`RawDataset`: uint8 image tensors and
integer labels, with a test split where the source defines one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import DataConfig
from ..errors import DataError
from ..registry import Registry


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    sources: list[str] | None = None  # each image's file, for folder and CSV data
    mapped: bool = False  # images are memory-mapped from a file (larger than memory): gathered batch by batch
    shards: list[str] | None = None  # streamed from these packed shards: ``images`` is empty, of the right shape

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        if self.shards is not None:  # load_data holds out no split of packed data: pack already did
            raise ValueError("a streamed split has no subsets")
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
    size_note: str = ""  # how the default image size was chosen, for folders and CSVs
    storage_note: str = ""  # where decoded folder/CSV images are kept (memory or memory-mapped) and why
    stats: tuple[list[float], list[float]] | None = None  # the training images' mean and std, where known


def training_images(total: int, cfg: DataConfig, hold_test: bool, hold_val: bool = True) -> int:
    """About how many of ``total`` images train once ``load_data`` holds out its splits (those the source lacks)."""
    kept = total * (1 - cfg.test_split if hold_test else 1)
    return round(kept * (1 - cfg.val_split if hold_val else 1))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[..., RawDataset]
    description: str
    train_images: int | None = None  # images in the source's training set (before validation is held out)
    has_test_split: bool = True  # False: a test split is held out of the training images


_DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(
    name: str, description: str, *, train_images: int | None = None, has_test_split: bool = True
) -> Callable:
    """Decorator: ``@register_dataset("mnist", "...")`` on ``def load(config) -> RawDataset``.

    ``train_images`` (optional) lets ``imgclf recipes`` show the batch size and epochs the small-data rule
    gives this dataset without loading it."""

    def decorator(fn: Callable[..., RawDataset]) -> Callable[..., RawDataset]:
        _DATASETS.add(name, DatasetSpec(name, fn, description, train_images, has_test_split))
        return fn

    return decorator


def dataset_names() -> list[str]:
    return sorted(_DATASETS.names(), key=str.casefold)


def list_datasets() -> list[DatasetSpec]:
    return sorted(_DATASETS, key=lambda spec: spec.name.casefold())


def get_dataset(name: str) -> DatasetSpec:
    spec = _DATASETS.get(name)
    if spec is None:
        raise DataError(
            f"unknown dataset {name!r}: use one of {', '.join(dataset_names())}, "
            "a folder with one sub-folder per class, or a CSV of file,label"
        )
    return spec


# ---------------------------------------------------------------- sources: where a path's images come from


@dataclass(frozen=True)
class SourceSpec:
    """A kind of path `data` may name (a folder, a CSV, packed shards): whether a path is one, its dataset's
    name, and its loader ``(config, size_cap) -> RawDataset`` (``size_cap``: the largest default image size)."""

    kind: str
    usage: str  # how `imgclf datasets` names it: "PATH/", "FILE.csv"
    description: str
    matches: Callable[[Path], bool]
    load: Callable[[DataConfig, int], RawDataset]
    name: Callable[[Path], str] = lambda path: path.resolve().name
    searched: bool = False  # `train` with no model tries the candidates on it (imgclf.train.search)


_SOURCES: Registry[SourceSpec] = Registry("source")


def register_source(
    kind: str,
    usage: str,
    description: str,
    matches: Callable[[Path], bool],
    name: Callable[[Path], str] | None = None,
    searched: bool = False,
) -> Callable:
    """Decorator: ``@register_source("csv", "FILE.csv", "...", matches=...)`` on ``def load(config, size_cap)``;
    a path is the first registered source it matches (checked before the dataset names)."""

    def decorator(fn: Callable[[DataConfig, int], RawDataset]) -> Callable[[DataConfig, int], RawDataset]:
        extra = {"name": name} if name is not None else {}
        _SOURCES.add(kind, SourceSpec(kind, usage, description, matches, fn, searched=searched, **extra))
        return fn

    return decorator


def list_sources() -> list[SourceSpec]:
    return list(_SOURCES)


def source_for(path: Path) -> SourceSpec | None:
    """The source a path is, or None (then `data` names a dataset); sources do not overlap."""
    return next((source for source in _SOURCES if source.matches(path)), None)


def get_source(kind: str) -> SourceSpec:
    found = _SOURCES.get(kind)
    if found is None:
        raise KeyError(f"unknown source {kind!r}; known: {', '.join(_SOURCES.names())}")
    return found
