"""From a raw source to the run's data: one image size, train/val/test splits, normalisation stats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF

from ..config import TrainConfig
from ..errors import DataError
from .folder import load_csv, load_folder
from .registry import RawDataset, Split, get_dataset


@dataclass
class DataBundle:
    """Everything training, evaluation and the reports need to know about the data."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    mean: list[float]
    std: list[float]
    hflip: bool
    kind: str = "builtin"  # builtin | folder | csv
    skipped: list[tuple[str, str]] = field(default_factory=list)
    from_cache: bool = False

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.train.labels, minlength=self.num_classes).tolist()


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out): ``fraction`` of each class held out, at least one where a class has two."""
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for cls in torch.unique(labels):
        index = torch.nonzero(labels == cls).flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        n_held = int(round(len(index) * fraction))
        n_held = min(max(n_held, 1 if len(index) >= 2 else 0), len(index) - 1)
        held.append(index[:n_held])
        kept.append(index[n_held:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in the 0..1 range, computed in chunks (float64)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def _resize(split: Split | None, size: int) -> Split | None:
    if split is None or split.images.shape[-1] == size and split.images.shape[-2] == size:
        return split
    images = TF.resize(split.images, [size], antialias=True)
    return Split(TF.center_crop(images, [size, size]), split.labels, split.sources)


def resolve_source(cfg: TrainConfig) -> tuple[str, str, Callable[[TrainConfig], RawDataset]]:
    """The dataset's display name, kind and loader: a registered name, a folder, or a CSV file."""
    path = Path(cfg.data).expanduser()
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DataError(f"{path}: no such CSV file; check the path")
        name = path.stem if path.stem not in ("train", "labels") else path.resolve().parent.name
        return name, "csv", load_csv
    if path.is_dir():
        return path.resolve().name, "folder", load_folder
    if any(sep in cfg.data for sep in ("/", "\\")) or cfg.data.startswith("."):
        raise DataError(f"{cfg.data}: no such folder or file; give a folder of class sub-folders, a CSV, or a dataset name")
    spec = get_dataset(cfg.data)
    return spec.name, "builtin", spec.load


def load_data(cfg: TrainConfig) -> DataBundle:
    """Load, resize, split and measure the data a config names (splits are seeded by ``cfg.seed``)."""
    name, kind, loader = resolve_source(cfg)
    raw: RawDataset = loader(cfg)
    size = cfg.image_size or raw.train.images.shape[-1]
    train, val, test = (_resize(s, size) for s in (raw.train, raw.val, raw.test))
    if test is None:
        kept, held = stratified_split(train.labels, cfg.test_split, cfg.seed)
        train, test = train.subset(kept), train.subset(held)
    if val is None:
        kept, held = stratified_split(train.labels, cfg.val_split, cfg.seed + 1)
        train, val = train.subset(kept), train.subset(held)
    if len(val) == 0 or len(test) == 0:
        raise DataError(f"{cfg.data}: too few images ({len(raw.train)}) for train, validation and test splits; add more images")
    mean, std = channel_stats(train.images)
    return DataBundle(name, raw.classes, train, val, test, mean, std, raw.hflip, kind, raw.skipped, raw.from_cache)
