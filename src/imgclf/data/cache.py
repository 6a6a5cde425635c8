"""Decode cache: a folder or CSV dataset is decoded once per image size into one raw uint8 file.

The file is N x C x size x size bytes, nothing else (as nanoGPT keeps its tokens), with a JSON header
beside it; it is filled by the decoding threads one chunk at a time, so decoding never holds the whole
dataset in memory. Training then either reads it into memory or memory-maps it: a mapped file's pages
belong to the page cache, which the kernel fills on demand and evicts under pressure, so a folder larger
than memory trains with bounded resident memory (and processes of one machine share one copy).

The cache lives in the data dir (``--data-dir``, default ``~/.cache/imgclf``) under ``cache/``. Its
name carries a hash of every file's path, size and modification time plus the image size and pixel
limit, so adding, removing, replacing or touching a file makes a new key, and the stale files of the
same folder and size are removed when the new ones are written.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..fsutil import atomic_path, atomic_write_json
from .images import Decoded, DecodeSpec, decode_each, decode_images

FORMAT = "imgclf-decode-cache-3"  # 3: raw uint8 rows + JSON header, memory-mappable
STORAGES = ("auto", "memory", "mmap")
MEMORY_SHARE = 0.5  # auto keeps decoded images in memory when they take at most this share of the available
DISK_SHARE = 0.8  # ... and refuses to write a cache file larger than this share of the free disk


@dataclass
class DecodedImages:
    """A folder's usable images, their indices into the file list, and what was skipped and why."""

    images: torch.Tensor  # N x C x size x size uint8: in memory, or memory-mapped from the cache file
    kept: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    from_cache: bool = False
    storage: str = "memory"  # memory | mmap
    note: str = ""  # where the images are kept and why, for the run's log


def cache_key(paths: Sequence[Path], spec: DecodeSpec) -> str:
    # a centre crop keys as before `resize` existed: caches written then stay valid
    fitted = "" if spec.resize == "crop" else "|" + spec.resize
    digest = hashlib.sha1(f"{FORMAT}|{spec.size}|{spec.max_pixels}{fitted}".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"\n{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def cache_file(cache_dir: Path, label: str, size: int, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "images"
    return cache_dir / f"{safe}-{size}px-{key}.u8"


def header_file(pixels: Path) -> Path:
    return pixels.with_suffix(".json")


# ---------------------------------------------------------------- memory


def available_memory() -> int:
    """Bytes this process can still take: the least of the system's available memory, the cgroup's
    remaining limit and the process's data limit (RLIMIT_DATA, which a memory-mapped file does not count)."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        limits.append(int(info["MemAvailable"]) * 1024)
    except (OSError, KeyError, ValueError):
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    try:
        cap, used = (Path("/sys/fs/cgroup") / name for name in ("memory.max", "memory.current"))
        if cap.read_text().strip() != "max":
            limits.append(int(cap.read_text()) - int(used.read_text()))
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft - _data_in_use())
    return max(0, min(limits))


def _data_in_use() -> int:
    """Bytes counted against RLIMIT_DATA now (VmData)."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmData:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return 0


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**28 else f"{n / 2**20:.0f} MB"


def choose_storage(nbytes: int, setting: str = "auto") -> tuple[str, str]:
    """Where decoded images of ``nbytes`` are kept (memory | mmap), and the reason, for the log."""
    available = available_memory()
    if setting != "auto":
        return setting, f"decoded images ({_gb(nbytes)}) {_where(setting)} (`storage={setting}`)"
    if nbytes <= MEMORY_SHARE * available:
        return "memory", f"decoded images ({_gb(nbytes)}) in memory ({_gb(available)} available)"
    return "mmap", (
        f"decoded images ({_gb(nbytes)}) memory-mapped from the cache file: more than "
        f"{MEMORY_SHARE:.0%} of the {_gb(available)} available memory"
    )


def _where(storage: str) -> str:
    return "in memory" if storage == "memory" else "memory-mapped from the cache file"


# ---------------------------------------------------------------- the file


def _map(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """The file as a read-only tensor whose pages are read on demand (MAP_SHARED, PROT_READ)."""
    if not shape[0]:
        return torch.empty(shape, dtype=torch.uint8)
    array = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    with warnings.catch_warnings():  # torch warns that the array is read-only: nothing here writes to it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _load(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    try:
        return torch.from_numpy(np.fromfile(path, dtype=np.uint8).reshape(shape))
    except MemoryError:
        raise DataError(
            f"{path}: the decoded images ({_gb(path.stat().st_size)}) do not fit in the "
            f"{_gb(available_memory())} of memory available; train with `storage=mmap` (or `auto`)"
        ) from None


def _open(pixels: Path, storage: str) -> DecodedImages | None:
    """The cache entry at ``pixels``, or None when it is missing, foreign or damaged (a miss, never an error)."""
    try:
        header = json.loads(header_file(pixels).read_text())
        if header.get("format") != FORMAT:
            return None
        shape = tuple(int(n) for n in header["shape"])
        if pixels.stat().st_size != int(np.prod(shape)):
            return None
        kept, skipped = [int(i) for i in header["kept"]], [(str(f), str(r)) for f, r in header["skipped"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    storage, note = choose_storage(pixels.stat().st_size, storage)
    images = _map(pixels, shape) if storage == "mmap" else _load(pixels, shape)
    return DecodedImages(images, kept, skipped, True, storage, note)


def _remove_stale(pixels: Path) -> None:
    for stale in pixels.parent.glob(pixels.name.rsplit("-", 1)[0] + "-*"):
        if stale.suffix in (".u8", ".json", ".pt"):  # .pt: the cache format before 3
            stale.unlink(missing_ok=True)


def _keep_channel_zero(path: Path, n: int, size: int, chunk: int = 4096) -> None:
    """Rewrite a file of 3-channel rows with channel 0 only (every image was grayscale: its channels are equal)."""
    rows = _map(path, (n, 3, size, size))
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        for start in range(0, n, chunk):
            out.write(rows[start : start + chunk, :1].numpy().tobytes())


def write_decoded(
    results: Iterable[Decoded | str], names: Sequence[str], size: int, path: Path
) -> tuple[tuple[int, ...], list[int], list[tuple[str, str]]]:
    """Write decoded images (or skip reasons) one at a time into ``path`` (atomically); returns the file's
    shape, the kept indices and the skipped (name, reason). One channel when every image is grayscale."""
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    all_gray = True
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as out:
            for i, result in enumerate(results):
                if isinstance(result, str):
                    skipped.append((str(names[i]), result))
                    continue
                kept.append(i)
                out.write(result[0].numpy().tobytes())
                all_gray &= result[1]
        if all_gray and kept:
            _keep_channel_zero(tmp, len(kept), size)
    channels = 1 if all_gray and kept else 3
    return (len(kept), channels, size, size), kept, skipped


def decode_to_file(
    paths: Sequence[Path], spec: DecodeSpec, path: Path
) -> tuple[tuple[int, ...], list[int], list[tuple[str, str]]]:
    """Decode ``paths`` in parallel threads straight into ``path``, a chunk at a time (:func:`write_decoded`)."""
    return write_decoded(decode_each(paths, spec), [str(p) for p in paths], spec.size, path)


def _check_disk(cache_dir: Path, nbytes: int) -> None:
    free = shutil.disk_usage(cache_dir).free
    if nbytes > DISK_SHARE * free:
        raise DataError(
            f"{cache_dir}: decoding these images at this size takes up to {_gb(nbytes)}, more than "
            f"{DISK_SHARE:.0%} of the {_gb(free)} free there; pack the folder into shards "
            "(`imgclf pack FOLDER --out SHARDS`, then `--data SHARDS`), lower `image_size`, or set `data_dir`"
        )


def decode_cached(
    paths: Sequence[Path],
    spec: DecodeSpec,
    cache_dir: str | os.PathLike | None,
    label: str,
    storage: str = "auto",
    scratch_dir: Path | None = None,
) -> DecodedImages:
    """Decode ``paths`` through the cache and keep the images in memory or memory-mapped (``storage``).

    ``cache_dir=None`` decodes without keeping a file: into memory, or, when the images would not fit,
    into a temporary file in ``scratch_dir`` (not /tmp, often memory itself) that is unlinked once mapped. A cache
    that cannot be written (read-only data dir) decodes into memory with a warning: the next run decodes again.
    """
    if storage not in STORAGES:
        raise DataError(f"`storage` {storage!r}: use one of {', '.join(STORAGES)}")
    upper_bound = len(paths) * 3 * spec.size * spec.size
    if cache_dir is None:
        return _decode_uncached(paths, spec, storage, upper_bound, scratch_dir)
    pixels = cache_file(Path(cache_dir), label, spec.size, cache_key(paths, spec))
    fill = lambda file: decode_to_file(paths, spec, file)  # noqa: E731
    try:
        return cached_images(pixels, upper_bound, fill, storage)
    except OSError as exc:  # read-only or not ours: the images still fit a run, said out loud
        decoded = _in_memory(paths, spec)
        decoded.note = (
            f"warning: the cache in {pixels.parent} cannot be written ({exc.strerror or exc}): {decoded.note}, "
            "decoded again by every run; make it writable or set `data_dir` to a folder you can write"
        )
        return decoded


Fill = Callable[[Path], tuple[tuple[int, ...], list[int], list[tuple[str, str]]]]


def cached_images(pixels: Path, upper_bound: int, fill: Fill, storage: str = "auto") -> DecodedImages:
    """The cache entry ``pixels``, written by ``fill(file)`` first when missing (then its header beside it);
    ``upper_bound``: the most bytes the file can take, checked against the free disk first. OSError when the
    cache folder cannot be written."""
    cached = _open(pixels, storage)
    if cached is not None:
        return cached
    pixels.parent.mkdir(parents=True, exist_ok=True)
    _check_disk(pixels.parent, upper_bound)
    _remove_stale(pixels)
    shape, kept, skipped = fill(pixels)
    atomic_write_json(header_file(pixels), {"format": FORMAT, "shape": shape, "kept": kept, "skipped": skipped})
    opened = _open(pixels, storage)
    assert opened is not None, pixels  # just written
    opened.from_cache = False
    return opened


def _in_memory(paths: Sequence[Path], spec: DecodeSpec) -> DecodedImages:
    images, kept, skipped, _ = decode_images(paths, spec)
    return DecodedImages(images, kept, skipped, note=f"decoded images ({_gb(images.numel())}) in memory")


def _decode_uncached(
    paths: Sequence[Path], spec: DecodeSpec, storage: str, upper_bound: int, scratch_dir: Path | None
) -> DecodedImages:
    if choose_storage(upper_bound, storage)[0] == "memory":
        return _in_memory(paths, spec)
    if scratch_dir is not None:
        scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imgclf-decode-", dir=scratch_dir) as folder:
        pixels = Path(folder) / "images.u8"
        shape, kept, skipped = decode_to_file(paths, spec, pixels)
        images = _map(pixels, shape)  # the mapping outlives the unlinked file
    note = f"decoded images ({_gb(images.numel())}) memory-mapped from an unlinked temporary file (`cache=False`)"
    return DecodedImages(images, kept, skipped, False, "mmap", note)
