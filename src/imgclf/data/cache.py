"""Decode cache: a folder or CSV dataset is decoded once per image size and kept as one uint8 tensor.

The cache file lives in the data dir (``--data-dir``, default ``~/.cache/imgclf``) under ``cache/``. Its
name carries a hash of every file's path, size and modification time plus the image size and channel
request, so adding, removing, replacing or touching a file makes a new key, and the stale file of the
same folder and size is removed when the new one is written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from ..fsutil import atomic_path
from .images import decode_images

FORMAT = "imgclf-decode-cache-2"  # 2: the pixel limit is part of the key
Decoded = tuple[torch.Tensor, list[int], list[tuple[str, str]], int]


def cache_key(paths: list[Path], size: int, channels: int | None, max_pixels: int) -> str:
    digest = hashlib.sha1(f"{FORMAT}|{size}|{channels}|{max_pixels}".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"\n{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def cache_file(cache_dir: Path, label: str, size: int, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "images"
    return cache_dir / f"{safe}-{size}px-{key}.pt"


def _read(path: Path) -> Decoded | None:
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 a truncated or foreign file is a cache miss, never an error
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return None
    return payload["images"], payload["kept"], [tuple(s) for s in payload["skipped"]], payload["channels"]


def _write(path: Path, decoded: Decoded) -> None:
    images, kept, skipped, channels = decoded
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.pt"):
        stale.unlink(missing_ok=True)
    payload = {
        "format": FORMAT,
        "images": images,
        "kept": kept,
        "skipped": [list(s) for s in skipped],
        "channels": channels,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def decode_cached(
    paths: list[Path],
    size: int,
    cache_dir: str | os.PathLike | None,
    label: str,
    channels: int | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> tuple[Decoded, bool]:
    """:func:`decode_images` through the cache; returns (decoded, whether it came from the cache).

    ``cache_dir=None`` decodes without caching. A cache that cannot be written (read-only data dir)
    costs nothing but the next run's decode.
    """
    if cache_dir is None:
        return decode_images(paths, size, channels, max_pixels), False
    path = cache_file(Path(cache_dir), label, size, cache_key(paths, size, channels, max_pixels))
    if path.is_file():
        cached = _read(path)
        if cached is not None:
            return cached, True
    decoded = decode_images(paths, size, channels, max_pixels)
    try:
        _write(path, decoded)
    except OSError:
        pass
    return decoded, False
