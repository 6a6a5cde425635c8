"""``imgclf pack``: a folder or CSV written as WebDataset tar shards (:mod:`.shards` reads them back).

The same files, splits, image size and pixels as training from the folder would use are decoded once and
written as ``SHARDS/{train,val,test}-NNNNNN.tar`` (one ``.png``, or ``.jpg`` with ``jpeg_quality``, and one
``.cls`` per image), then ``SHARDS/index.json`` (classes, sizes, counts, the training images' mean and std)
last; the whole is written beside ``out`` and renamed into place when complete.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..config import DataConfig, DecodeSpec
from ..errors import DataError, writing
from ..fsutil import atomic_write_json, make_dir
from ..recipes import image_size_cap
from ..runtime import Log
from .folder import SPLIT_NAMES, decode_size, source_parts, task_of_parts
from .images import decode_each
from .shards import FORMAT, INDEX, SHARD_IMAGES, _webdataset
from .stats import RunningStats

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
