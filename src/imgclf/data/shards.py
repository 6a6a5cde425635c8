"""Packed shards: a dataset as WebDataset tar shards, for folders past the disk's comfort as raw pixels.

``imgclf pack DATA --out SHARDS`` (:mod:`.pack`) decodes a folder or CSV once at the training size and writes
``SHARDS/{train,val,test}-NNNNNN.tar`` (one ``.png`` or ``.jpg`` and one ``.cls`` per image, in WebDataset's
layout) and ``SHARDS/index.json`` (classes, sizes, counts, the training images' mean and std), written last.
A photo folder packs to a fraction of its raw pixels (PNG about half, JPEG a tenth).

``--data SHARDS`` then trains by streaming: DataLoader workers read the training shards (each process of
a distributed run its own shards, each worker its own part of those), shuffle through a buffer and decode;
the batch is augmented on the training device as every other source's is. The validation and test shards
go through the decode cache like a folder's images (memory or memory-mapped).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import DataConfig, DecodeSpec
from ..errors import DataError
from .cache import cache_file, cached_images, write_decoded
from .images import decode_bytes, to_channels
from .loader import to_network_input
from .registry import RawDataset, Split, register_source

INDEX = "index.json"
FORMAT = "imgclf-shards-1"
SHARD_IMAGES = 2000  # images per shard: enough shards for every process and worker, each a few MB
SHUFFLE_BUFFER = 2000  # images a worker shuffles among (WebDataset's usual few thousand)


def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise DataError("packed shards need the webdataset package: pip install webdataset") from None
    return webdataset


def is_shards(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / INDEX).is_file()


def read_index(folder: Path) -> dict[str, Any]:
    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder / INDEX}: unreadable ({exc}); pack the data again with `imgclf pack`") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{folder / INDEX}: not an imgclf shard index; pack the data again with `imgclf pack`")
    return index


# ---------------------------------------------------------------- read


def _decode_sample(sample: dict[str, Any], size: int, channels: int) -> tuple[torch.Tensor, int]:
    data = sample.get("png") or sample.get("jpg")
    decoded = decode_bytes(data or b"", DecodeSpec(size))  # written at its size: nothing to fit
    if isinstance(decoded, str):
        raise DataError(f"{sample.get('__url__', 'a shard')}: image {sample.get('__key__')} is damaged ({decoded})")
    return to_channels(decoded[0], channels), int(sample["cls"])


def _samples(shards: list[str]) -> Iterator[dict[str, Any]]:
    """The samples of ``shards`` in order, as WebDataset reads them (tar members grouped by key)."""
    wds = _webdataset()
    return iter(wds.WebDataset(shards, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False))


def _decoded_split(folder: Path, index: dict[str, Any], split: str, cfg: DataConfig) -> Split:
    """A validation or test split, through the decode cache (memory or memory-mapped) like a folder's."""
    size, channels = index["image_size"], index["channels"]
    shards = [str(folder / name) for name in index["shards"][split]]

    def fill(file: Path) -> tuple[tuple[int, ...], list[int], list[tuple[str, str]]]:
        images = (_decode_sample(sample, size, 3)[0] for sample in _samples(shards))
        return write_decoded(((image, channels == 1) for image in images), [], size, file)

    stamp = "|".join(f"{s}:{os.stat(s).st_mtime_ns}:{os.stat(s).st_size}" for s in shards)
    key = f"{split}-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}"  # the shards' names, sizes and times
    pixels = cache_file(Path(cfg.data_dir).expanduser() / "cache", f"{folder.resolve().name}-shards", size, key)
    decoded = cached_images(pixels, index["counts"][split] * channels * size * size, fill, cfg.storage)
    labels = torch.tensor(index["labels"][split], dtype=torch.long)
    return Split(decoded.images, labels, None, decoded.storage == "mmap")


@register_source("shards", "SHARDS/", "WebDataset tar shards written by `imgclf pack`, streamed", matches=is_shards)
def load_shards(cfg: DataConfig, size_cap: int = 0) -> RawDataset:
    """A packed dataset: the training split streamed from its shards, validation and test decoded (at the
    size they were packed at: ``size_cap`` does not apply)."""
    folder = Path(cfg.data).expanduser()
    index = read_index(folder)
    size, channels = index["image_size"], index["channels"]
    if cfg.image_size and cfg.image_size != size:
        raise DataError(
            f"{folder}: packed at {size} px, not {cfg.image_size}; leave `image_size` unset or pack again with it"
        )
    missing = [name for names in index["shards"].values() for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: shard(s) {', '.join(missing[:3])} missing; copy them back or pack again")
    train = Split(
        torch.empty(0, channels, size, size, dtype=torch.uint8),  # no pixels held: they stream from the shards
        torch.tensor(index["labels"]["train"], dtype=torch.long),
        shards=[str(folder / name) for name in index["shards"]["train"]],
    )
    val, test = (_decoded_split(folder, index, split, cfg) for split in ("val", "test"))
    return RawDataset(
        classes=index["classes"],
        train=train,
        val=val,
        test=test,
        skipped=[(str(f), str(r)) for f, r in index["skipped"]],
        stats=(index["mean"], index["std"]),
        storage_note=f"training images streamed from {len(train.shards or [])} shard(s) in {folder}",
    )


class ShardStream(IterableDataset):
    """Decoded (image, label) pairs of some shards, shuffled through a buffer, endlessly (the batch iterator
    ends the epoch). A DataLoader worker reads its own share of the shards; the order is seeded by the epoch."""

    def __init__(self, shards: list[str], size: int, channels: int, seed: int, buffer: int = SHUFFLE_BUFFER) -> None:
        self.shards, self.size, self.channels, self.seed, self.buffer = shards, size, channels, seed, buffer

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.shards[worker::workers]
        rng = random.Random(self.seed * 1009 + worker)
        while mine:
            order = rng.sample(mine, len(mine))
            pending: list[dict[str, Any]] = []
            for sample in _samples(order):
                pending.append(sample)
                if len(pending) >= self.buffer:  # swap-remove a random one: O(1), the buffer stays shuffled
                    i = rng.randrange(len(pending))
                    pending[i], pending[-1] = pending[-1], pending[i]
                    yield _decode_sample(pending.pop(), self.size, self.channels)
            rng.shuffle(pending)
            yield from (_decode_sample(sample, self.size, self.channels) for sample in pending)


class ShardBatches:
    """Training batches streamed from shards, with :class:`~imgclf.data.loader.BatchIterator`'s interface:
    ``len`` steps an epoch, ``set_epoch``, and ``rows_in_step`` (the global batch).

    Each process of a distributed run reads its own shards (a seeded permutation of them per epoch, dealt
    out by rank, as DistributedSampler deals out indices); every process takes the same number of steps.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device,
        mean: list[float],
        std: list[float],
        *,
        augment: str = "none",
        hflip: bool = False,
        turns: str = "none",
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        workers: int | None = None,
    ) -> None:
        self.shards = split.shards or []
        if len(self.shards) < world_size:
            raise DataError(
                f"{len(self.shards)} training shard(s) for {world_size} processes; pack again with a smaller --shard-size"
            )
        self.size, self.channels = split.images.shape[-1], split.images.shape[1]
        self.batch_size, self.device, self.augment, self.hflip = batch_size, device, augment, hflip
        self.turns = turns
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.seed, self.epoch, self.channels_last = seed, 0, channels_last
        self.rank, self.world_size = rank, world_size
        self.rows_in_step = batch_size * world_size
        self.images = len(split.labels)
        self.workers = workers if workers is not None else max(1, (os.cpu_count() or 2) // world_size)

    def __len__(self) -> int:
        return max(1, self.images // self.rows_in_step)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> list[str]:
        order = torch.randperm(
            len(self.shards), generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        )
        return [self.shards[i] for i in order[self.rank :: self.world_size].tolist()]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shards = self._my_shards()
        stream_seed = (self.seed * 100_003 + self.epoch) * 64 + self.rank
        stream = ShardStream(shards, self.size, self.channels, stream_seed)
        workers = min(self.workers, len(shards))
        loader = DataLoader(
            stream, batch_size=self.batch_size, num_workers=workers, pin_memory=self.device.type == "cuda"
        )
        generator = torch.Generator().manual_seed(stream_seed)
        batches = iter(loader)
        for _ in range(len(self)):
            images, labels = _next_batch(batches)
            images = images.to(self.device, non_blocking=True)
            flip = torch.rand(len(labels), generator=generator) < 0.5 if self.hflip else None
            x = to_network_input(images, self.mean, self.std, self.augment, flip, generator, turns=self.turns)
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), labels.to(self.device)
        del batches  # ends the epoch's workers


def _next_batch(batches: Iterator[Any]) -> Any:
    """The next batch; a damaged shard's DataError comes back from a worker wrapped in its traceback text,
    and is raised again as the one line it was."""
    try:
        return next(batches)
    except DataError as exc:
        last = str(exc).strip().splitlines()[-1]
        raise DataError(last.split("DataError: ", 1)[-1]) from None


def shard_sample(split: Split, count: int) -> torch.Tensor:
    """The first ``count`` training images of a streamed split, decoded (for data-dependent initialisation)."""
    size, channels = split.images.shape[-1], split.images.shape[1]
    images: list[torch.Tensor] = []
    for sample in _samples(split.shards or []):
        if len(images) >= count:
            break
        images.append(_decode_sample(sample, size, channels)[0])
    return torch.stack(images) if images else split.images
