"""From a raw source to the run's data: one image size, train/val/test splits, normalisation stats."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from ..tasks import Task, task_of
from .folder import SIZE_CAP, load_csv, load_folder
from .images import fit_tensor
from .registry import RawDataset, Split, get_dataset
from .shards import is_shards, load_shards
from .splits import stratified_split
from .stats import channel_stats


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
    kind: str = "builtin"  # builtin | folder | csv | shards
    skipped: list[tuple[str, str]] = field(default_factory=list)
    from_cache: bool = False
    size_note: str = ""  # how a folder's default image size was chosen
    storage_note: str = ""  # where a folder's decoded images are kept (memory or memory-mapped) and why

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def task(self) -> Task:
        """Single-label (class indices) or multi-label (0/1 rows), as the source's labels are."""
        return task_of(self.train.labels)

    def class_counts(self) -> list[int]:
        """Training images per class (several labels: images carrying each)."""
        return self.task.class_counts(self.train.labels, self.num_classes).tolist()


def _resize(split: Split, size: int, resize: str = "crop") -> Split:
    """A split's images at ``size``, as every image file is fitted (:func:`~imgclf.data.images.fit_tensor`)."""
    if split.images.shape[-2:] == (size, size):
        return split
    return Split(fit_tensor(split.images, size, resize), split.labels, split.sources)


def resolve_source(cfg: DataConfig, size_cap: int = SIZE_CAP) -> tuple[str, str, Callable[[DataConfig], RawDataset]]:
    """The dataset's display name, kind and loader: a registered name, a folder, or a CSV file (whose
    default image size is at most ``size_cap``)."""
    path = Path(cfg.data).expanduser()
    if is_shards(path):
        return path.resolve().name, "shards", load_shards
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DataError(f"{path}: no such CSV file; check the path")
        name = path.stem if path.stem not in ("train", "labels") else path.resolve().parent.name
        return name, "csv", functools.partial(load_csv, size_cap=size_cap)
    if path.is_dir():
        return path.resolve().name, "folder", functools.partial(load_folder, size_cap=size_cap)
    if any(sep in cfg.data for sep in ("/", "\\")) or cfg.data.startswith("."):
        raise DataError(
            f"{cfg.data}: no such folder or file; give a folder of class sub-folders, a CSV, or a dataset name"
        )
    spec = get_dataset(cfg.data)
    return spec.name, "builtin", spec.load


def load_data(cfg: DataConfig, size_cap: int = SIZE_CAP) -> DataBundle:
    """Load, resize, split and measure the data a config names (splits are seeded by ``cfg.seed``).
    A folder or CSV without `image_size` gets its images' own size, at most ``size_cap``."""
    name, kind, loader = resolve_source(cfg, size_cap)
    raw: RawDataset = loader(cfg)
    size = cfg.image_size or raw.train.images.shape[-1]
    train = _resize(raw.train, size, cfg.resize)
    val, test = (_resize(s, size, cfg.resize) if s is not None else None for s in (raw.val, raw.test))
    if test is None:
        kept, held = stratified_split(train.labels, cfg.test_split, cfg.seed)
        train, test = train.subset(kept), train.subset(held)
    if val is None:
        kept, held = stratified_split(train.labels, cfg.val_split, cfg.seed + 1)
        train, val = train.subset(kept), train.subset(held)
    if len(val) == 0 or len(test) == 0:
        raise DataError(
            f"{cfg.data}: too few images ({len(raw.train)}) for train, validation and test splits; add more images"
        )
    mean, std = raw.stats or channel_stats(train.images)
    return DataBundle(
        name,
        raw.classes,
        train,
        val,
        test,
        mean,
        std,
        raw.hflip,
        kind,
        raw.skipped,
        raw.from_cache,
        raw.size_note,
        raw.storage_note,
    )
