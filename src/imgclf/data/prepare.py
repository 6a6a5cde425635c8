"""From a raw source to the run's data: one image size, train/val/test splits, normalisation stats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DataConfig, TrainConfig
from ..errors import DataError
from ..recipes import image_size_cap
from ..tasks import Task, task_of
from . import builtin, folder, shards  # noqa: F401  (they register the built-in datasets and the sources)
from .images import fit_tensor
from .registry import RawDataset, Split, get_dataset, source_for
from .registry import dataset_names as dataset_names  # these four re-exported (imgclf.data): once this module is
from .registry import list_datasets as list_datasets  # imported, every dataset and source is registered
from .registry import list_sources as list_sources
from .splits import split_by_task
from .splits import stratified_split as stratified_split
from .stats import channel_stats


@dataclass(frozen=True)
class DataBundle:
    """Everything training, evaluation and the reports need to know about the data; fixed once loaded (the
    normalisation a model starts from is a new bundle: ``dataclasses.replace(data, mean=..., std=...)``)."""

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


def resolve_source(cfg: DataConfig, size_cap: int) -> tuple[str, str, Callable[[DataConfig], RawDataset]]:
    """The dataset's display name, kind and loader: a registered source (a folder, a CSV, packed shards; their
    default image size at most ``size_cap``) or a registered dataset's name."""
    path = Path(cfg.data).expanduser()
    source = source_for(path)
    if source is not None:
        return source.name(path), source.kind, lambda config: source.load(config, size_cap)
    if any(sep in cfg.data for sep in ("/", "\\")) or cfg.data.startswith("."):
        raise DataError(
            f"{cfg.data}: no such folder or file; give a folder of class sub-folders, a CSV, or a dataset name"
        )
    spec = get_dataset(cfg.data)
    return spec.name, "builtin", spec.load


def load_data(cfg: DataConfig | TrainConfig, size_cap: int | None = None) -> DataBundle:
    """Load, resize, split and measure the data a config names (its data settings; splits are seeded by
    ``cfg.seed``). A folder or CSV without `image_size` gets its images' own size, at most ``size_cap``
    (default: the recipes' cap on a CPU)."""
    cfg = cfg.data_config if isinstance(cfg, TrainConfig) else cfg
    name, kind, loader = resolve_source(cfg, size_cap or image_size_cap("cpu"))
    raw: RawDataset = loader(cfg)
    size = cfg.image_size or raw.train.images.shape[-1]
    train = _resize(raw.train, size, cfg.resize)
    val, test = (_resize(s, size, cfg.resize) if s is not None else None for s in (raw.val, raw.test))
    if test is None:
        kept, held = split_by_task(train.labels, cfg.test_split, cfg.seed)
        train, test = train.subset(kept), train.subset(held)
    if val is None:
        kept, held = split_by_task(train.labels, cfg.val_split, cfg.seed + 1)
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
