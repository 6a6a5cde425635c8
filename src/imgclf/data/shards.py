"""Packed shards: a dataset as WebDataset tar shards, for folders past the disk's comfort as raw pixels.

``imgclf pack DATA --out SHARDS`` decodes a folder or CSV once at the training size (the same files, splits,
image size and pixels as training from the folder would use) and writes ``SHARDS/{train,val,test}-NNNNNN.tar``
(one ``.png``, or ``.jpg`` with ``jpeg_quality``, and one ``.cls`` per image, in WebDataset's layout) and
``SHARDS/index.json`` (classes, sizes, counts, the training images' mean and std), written last. A photo
folder packs to a fraction of its raw pixels (PNG about half, JPEG a tenth).

``--data SHARDS`` then trains by streaming: DataLoader workers read the training shards (each process of
a distributed run its own shards, each worker its own part of those), shuffle through a buffer and decode;
the batch is augmented on the training device as every other source's is. The validation and test shards
go through the decode cache like a folder's images (memory or memory-mapped).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import DataConfig, DecodeSpec
from ..errors import DataError, writing
from ..fsutil import atomic_write_json, make_dir
from ..recipes import image_size_cap
from .cache import cache_file, cached_images, write_decoded
from .folder import SPLIT_NAMES, decode_size, source_parts, task_of_parts
from .images import decode_bytes, decode_each, to_channels
from .loader import to_network_input
from .registry import RawDataset, Split, register_source
from .stats import RunningStats

INDEX = "index.json"
FORMAT = "imgclf-shards-1"
SHARD_IMAGES = 2000  # images per shard: enough shards for every process and worker, each a few MB
SHUFFLE_BUFFER = 2000  # images a worker shuffles among (WebDataset's usual few thousand)
Log = Callable[[str], None]


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


# ---------------------------------------------------------------- pack


@dataclass
class PackResult:
    out: Path
    counts: dict[str, int]  # images per split
    shards: dict[str, list[str]]
    bytes: int
    seconds: float
    skipped: list[tuple[str, str]]


def _encode(image: torch.Tensor, gray: bool, jpeg_quality: int | None) -> tuple[str, bytes]:
    pixels = image[0].numpy() if gray else image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    if jpeg_quality:
        Image.fromarray(pixels).save(buffer, "JPEG", quality=jpeg_quality)
        return "jpg", buffer.getvalue()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)  # level 1: 3x faster to write, 5% larger
    return "png", buffer.getvalue()


@dataclass
class _Written:
    labels: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    all_gray: bool = True


def _write_split(
    sink: Any,
    files: list[Path],
    labels: list[int],
    spec: DecodeSpec,
    jpeg_quality: int | None,
    stats: RunningStats | None,
) -> _Written:
    """Decode ``files`` (threads) and write each usable one as a sample, its image and its class; ``stats``
    accumulates the images' mean and std on the way."""
    written = _Written()
    for file, label, result in zip(files, labels, decode_each(files, spec)):
        if isinstance(result, str):
            written.skipped.append((str(file), result))
            continue
        image, gray = result
        written.all_gray &= gray
        suffix, data = _encode(image, gray, jpeg_quality)
        sink.write({"__key__": f"{len(written.labels):09d}", suffix: data, "cls": label})
        written.labels.append(label)
        if stats is not None:
            stats.add(image[None])
    return written


def pack(
    cfg: DataConfig,
    out: str | os.PathLike,
    shard_images: int = SHARD_IMAGES,
    jpeg_quality: int | None = None,
    size_cap: int | None = None,
    log: Log = print,
) -> PackResult:
    """Write the folder or CSV ``cfg.data`` names as shards in ``out`` (which must not exist yet); the
    splits, image size and pixels are those training on it would use. Written beside ``out`` and renamed
    into place when complete, so an interrupted pack leaves nothing that looks usable."""
    start = time.perf_counter()
    out = Path(out).expanduser()
    if out.exists():
        raise DataError(f"--out {out}: already exists; choose a new folder for the shards")
    parts, classes = source_parts(cfg)
    paths = [p for files, _ in parts.values() for p in files]
    size, size_note = decode_size(cfg, paths, size_cap or image_size_cap("cpu"))
    if size_note:
        log(size_note)
    wds = _webdataset()
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    make_dir(partial, "out", exist_ok=False)
    counts, shards, labels, skipped, all_gray = {}, {}, {}, [], True
    stats = RunningStats()
    task_of_parts(parts).check("pack", cfg.data)
    for split in SPLIT_NAMES:
        files, split_labels = parts[split]
        # shards are written in a seeded random order: a worker reading a few shards still sees every class
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        files, split_labels = [files[i] for i in order], [split_labels[i] for i in order]
        pattern = str(partial / f"{split}-%06d.tar")
        with writing(out, "out"), wds.ShardWriter(pattern, maxcount=shard_images, verbose=0) as sink:
            written = _write_split(
                sink, files, split_labels, cfg.decode_spec(size), jpeg_quality, stats if split == "train" else None
            )
        skipped += written.skipped
        all_gray &= written.all_gray
        counts[split], labels[split] = len(written.labels), written.labels
        shards[split] = sorted(p.name for p in partial.glob(f"{split}-*.tar"))
        log(f"{split}: {len(written.labels):,} images in {len(shards[split])} shard(s)")
    if not counts["train"]:
        shutil.rmtree(partial)
        raise DataError(f"{cfg.data}: none of the {len(paths)} files could be read as an image; check the folder")
    mean, std = stats.result()
    channels = 1 if all_gray else 3
    index = {
        "format": FORMAT,
        "source": str(Path(cfg.data).expanduser().resolve()),
        "classes": classes,
        "image_size": size,
        "channels": channels,
        "counts": counts,
        "shards": shards,
        "labels": labels,
        "mean": mean[:channels],  # a grayscale image's three channels are equal
        "std": std[:channels],
        "skipped": skipped,
        "seed": cfg.seed,
        "val_split": cfg.val_split,
        "test_split": cfg.test_split,
    }
    atomic_write_json(partial / INDEX, index, "out")
    with writing(out, "out"):
        os.replace(partial, out)
    total_bytes = sum(f.stat().st_size for f in out.iterdir())
    return PackResult(out, counts, shards, total_bytes, time.perf_counter() - start, skipped)


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
            x = to_network_input(images, self.mean, self.std, self.augment, flip, generator)
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
