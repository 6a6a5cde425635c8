"""Decoding image files of any common format and mode into uint8 tensors of one size, safely.

No file reaches a native decoder before its header has been read and checked: an image that claims
more than ``max_pixels`` pixels (a decompression bomb: a few hundred bytes that claim 60,000 x 60,000)
is refused with a reason, never allocated. PNGs are decoded by Pillow only, because torchvision's libpng
binding crashes the whole process (SIGSEGV) on a PNG whose compressed body is shorter than its header
says, even at 300 x 300; Pillow raises a Python error instead. JPEGs that pass the check go to
torchvision's libjpeg-turbo decoder (2-4x faster than Pillow), which raises on corrupt data. Every
failure of one file becomes a reason string, so one bad file never ends a run of 60,000.

Training (folders, CSVs) and prediction find files the same way (:func:`find_images`) and decode them
the same way (:func:`decode_images`), so they see the same pixels.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF

from ..config import DecodeSpec
from ..errors import DataError

try:  # deprecated in torchvision 0.29 for TorchCodec; Pillow decodes everything if it goes away
    from torchvision import io as _tv_io
except ImportError:  # pragma: no cover
    _tv_io = None

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
DECODE_CHUNK = 512
MAX_ASPECT = 4  # longer side over shorter side beyond which the long side is cropped before resizing
BYTES_PER_PIXEL = 8  # the most an uncompressed image stores per pixel (16-bit RGBA): bounds a file's size
SIZE_SAMPLE = 1000  # files whose headers decide a folder's default image size

# imgclf enforces its own pixel limit before Pillow decodes; Pillow's warning below its hard limit is noise
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# torchvision 0.29 warns on every decode that TorchCodec supersedes it; filtered once here, because a
# catch_warnings() block per image is not thread-safe under the decoding threads
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)

T = TypeVar("T")
R = TypeVar("R")
Decoded = tuple[torch.Tensor, bool]  # 3 x size x size uint8, and whether the source was grayscale
RESIZE_MODES = ("crop", "pad", "stretch")


# ---------------------------------------------------------------- finding files


def visible_files(folder: Path) -> list[Path]:
    """Every visible file under ``folder``, recursively and sorted: what a class folder or a predicted
    folder holds. Hidden files and folders (.git, .ipynb_checkpoints, macOS's ._ files) are left out;
    files that are not images are kept here and skipped, with a reason, when decoded."""
    found: list[Path] = []
    for root, folders, files in os.walk(folder):  # pruning hidden folders: 3x quicker than rglob + a filter
        folders[:] = [name for name in folders if not name.startswith(".")]
        found.extend(Path(root, name) for name in files if not name.startswith("."))
    return sorted(found)


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, and the visible files inside folders (as training reads a class folder)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(visible_files(path))
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or folder; check the path")
    return found


# ---------------------------------------------------------------- headers


_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking the segments before it; None if malformed.
    Pillow's parser takes ~40 us a file and this ~2 us, on every JPEG of a folder."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_FRAMES:
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG or PNG from its header, before any decoder runs."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_size(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _pixel_limit_reason(width: int, height: int, max_pixels: int) -> str | None:
    if width <= 0 or height <= 0:
        return f"claims an empty {width}x{height} image"
    if width * height > max_pixels:
        return (
            f"claims {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(a decompression bomb, or raise `max_image_pixels` if the image is genuine)"
        )
    return None


# ---------------------------------------------------------------- pixels


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float grayscale: scale to 0..255 instead of clipping (Pillow's convert clips)."""
    array = np.asarray(img, dtype=np.float64)
    peak = 65535.0 if array.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), "L")


def _normalize_mode(img: Image.Image) -> tuple[Image.Image, bool]:
    """Return an 'L' or 'RGB' image and whether the source was grayscale."""
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _to_8bit(img), True
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        gray = img.mode in ("LA", "La")
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent areas become white
        img = Image.alpha_composite(background, rgba).convert("L" if gray else "RGB")
        return img, gray
    gray = img.mode in GRAY_MODES
    return img.convert("L" if gray else "RGB"), gray


def fit_tensor(image: torch.Tensor, size: int, resize: str) -> torch.Tensor:
    """C x H x W uint8 (or N x C x H x W) fitted to size x size, antialiased bilinear: ``crop`` resizes the
    shorter side and keeps the centre; ``pad`` resizes the longer side and pads the rest black, keeping the
    whole image; ``stretch`` resizes each side, changing the aspect. Every path (files, PIL images, tensors)
    ends here, so training and prediction see the same pixels."""
    if image.shape[-2:] == (size, size):
        return image
    h, w = image.shape[-2:]
    if resize == "stretch":
        return TF.resize(image, [size, size], antialias=True)
    if resize == "pad":
        scale = size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        image = TF.resize(image, [new_h, new_w], antialias=True)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        return TF.pad(image, [left, top, size - new_w - left, size - new_h - top], fill=0)
    short = min(h, w)
    if max(h, w) > MAX_ASPECT * short:  # a 1 x 1,000,000 strip would be resized to size x 10^6 size first
        image = TF.center_crop(image, [min(h, 2 * short), min(w, 2 * short)])
    return TF.center_crop(TF.resize(image, [size], antialias=True), [size, size])


def _from_pil(img: Image.Image, spec: DecodeSpec) -> Decoded:
    img = ImageOps.exif_transpose(img)  # the first frame of an animation: Pillow opens on it
    img, gray = _normalize_mode(img)
    array = np.array(img.convert("RGB"))  # a writable copy: torch.from_numpy shares it
    return fit_tensor(torch.from_numpy(array).permute(2, 0, 1), spec.size, spec.resize), gray


def _decode_jpeg(data: bytes, spec: DecodeSpec) -> Decoded | None:
    """torchvision's libjpeg-turbo decoder for plain 8-bit gray or RGB JPEGs; None for what needs
    Pillow (CMYK, or a photo large enough that Pillow's reduced-scale decoding is faster)."""
    if _tv_io is None:
        return None
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    image = _tv_io.decode_image(raw, mode=_tv_io.ImageReadMode.UNCHANGED, apply_exif_orientation=True)
    if image.dtype != torch.uint8 or image.shape[0] not in (1, 3):
        return None
    return fit_tensor(image.expand(3, -1, -1), spec.size, spec.resize), image.shape[0] == 1


def _decode_checked(data: bytes, spec: DecodeSpec) -> Decoded | str:
    """Check the header, then decode; the reason as a string for anything that is not a usable image."""
    dimensions = _header_size(data)
    if dimensions is not None:
        reason = _pixel_limit_reason(*dimensions, spec.max_pixels)
        if reason:
            return reason
        # JPEGs to libjpeg-turbo, except large photos, which Pillow decodes at 1/2..1/8 scale
        if data[:3] == b"\xff\xd8\xff" and min(dimensions) < 4 * spec.size:
            decoded = _decode_jpeg(data, spec)
            if decoded is not None:
                return decoded
    with Image.open(io.BytesIO(data)) as img:  # reads the header only
        width, height = img.size
        reason = _pixel_limit_reason(width, height, spec.max_pixels)
        if reason:
            return reason
        img.draft("RGB", (2 * spec.size, 2 * spec.size))  # JPEG: decode at reduced scale when the photo is large
        return _from_pil(img, spec)


def _read_checked(path: Path, max_pixels: int) -> bytes | str:
    """A file's bytes, or why not: no file of more bytes than its largest allowed image is read whole."""
    with open(path, "rb") as f:
        n_bytes = os.fstat(f.fileno()).st_size
        if n_bytes == 0:
            return "empty file"
        if n_bytes > BYTES_PER_PIXEL * max_pixels + 2**20:
            return f"{n_bytes:,} bytes, more than any image within the pixel limit of {max_pixels:,} needs"
        return f.read()


# a native decoder's message names its source file and line (torchvision: "decode_jpeg, /__w/.../decode_jpeg.cpp:171,
# Image is incomplete or truncated"): a user needs the last part only
_SOURCE_LOCATION = re.compile(r"(?:\w+, )?\S+\.(?:cpp|cc|cu|c|h|hpp):\d+,?\s*")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):  # its text names a BytesIO object's address
        return "not an image file in a format imgclf reads"
    first = _SOURCE_LOCATION.sub("", str(exc).splitlines()[0] if str(exc) else "")[:200]
    # what the decoder said, without its exception's class name (a user cannot act on "OSError")
    return f"damaged image: {first}" if first else "damaged image: the decoder stopped in it"


def _raise_pillow_limit(max_pixels: int) -> None:
    if max_pixels > 2 * (Image.MAX_IMAGE_PIXELS or 0):  # a user's higher limit must not meet Pillow's lower one
        Image.MAX_IMAGE_PIXELS = max_pixels


def _decode_guarded(read: Callable[[], bytes | str], spec: DecodeSpec) -> Decoded | str:
    _raise_pillow_limit(spec.max_pixels)
    try:
        data = read()
        return data if isinstance(data, str) else _decode_checked(data, spec)
    except Image.DecompressionBombError:  # Pillow's own limit, for formats whose header imgclf does not read
        return f"claims more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, over the limit of {spec.max_pixels:,}"
    except Exception as exc:  # noqa: BLE001  any decoder error of one file (MemoryError too) skips that file, never the run
        return _reason(exc)


def decode_file(path: Path, spec: DecodeSpec) -> Decoded | str:
    """(3 x size x size uint8, grayscale) or the reason the file is not a usable image."""
    return _decode_guarded(lambda: _read_checked(path, spec.max_pixels), spec)


def decode_bytes(data: bytes, spec: DecodeSpec) -> Decoded | str:
    """:func:`decode_file` for bytes already in memory (an upload): the same checks, the same pixels."""
    return _decode_guarded(lambda: data or "empty file", spec)


def read_image(item: str | os.PathLike | Image.Image, spec: DecodeSpec, channels: int) -> torch.Tensor:
    """One image (a file or an opened PIL image) as a C x size x size uint8 tensor; a one-line error naming
    the file when it is missing, unreadable or over the pixel limit."""
    if isinstance(item, Image.Image):
        reason = _pixel_limit_reason(*item.size, spec.max_pixels)
        if reason:
            raise DataError(f"image {item.size[0]}x{item.size[1]}: refused, it {reason}")
        return to_channels(_from_pil(item, spec)[0], channels)
    path = Path(item)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path")
    result = decode_file(path, spec)
    if isinstance(result, str):
        raise DataError(f"{path}: {describe_skip(result)}")
    return to_channels(result[0], channels)


def describe_skip(reason: str) -> str:
    """A reason from :func:`decode_file` as the rest of a one-line error."""
    if reason.startswith("claims"):
        return f"refused, it {reason}"
    return f"not a readable image ({reason}); remove it or convert it to PNG/JPEG"


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 1:
        # ITU-R 601 luma, the same weights Pillow uses for RGB -> L
        weights = torch.tensor([0.299, 0.587, 0.114]).view(-1, 1, 1)
        return (image.float() * weights).sum(-3, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return image.contiguous()


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int) -> Iterator[R]:
    """``map(fn, items)`` in ``workers`` threads, in order, with at most ``ahead`` results waiting: memory
    stays bounded whatever the number of items (``Executor.map`` submits them all at once)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _chunks(paths: Sequence[Path], chunk: int) -> Iterator[Sequence[Path]]:
    return (paths[i : i + chunk] for i in range(0, len(paths), chunk))


def decode_each(paths: Sequence[Path], spec: DecodeSpec) -> Iterator[Decoded | str]:
    """Each file's decoded image or skip reason, in order, decoded by threads a bounded number of chunks ahead."""
    workers = os.cpu_count() or 1
    decode_chunk = lambda c: [decode_file(Path(p), spec) for p in c]  # noqa: E731  one task per chunk: futures cost
    for chunk in bounded_map(decode_chunk, _chunks(paths, DECODE_CHUNK), workers, 2 * workers):
        yield from chunk


@dataclass
class DecodedBatch:
    """One batch of a stream: the usable files, their pixels, and the files skipped with the reason."""

    files: list[Path]
    images: torch.Tensor  # N x C x size x size uint8
    skipped: list[tuple[str, str]]


def stream_images(paths: Sequence[Path], spec: DecodeSpec, channels: int, batch: int = 256) -> Iterator[DecodedBatch]:
    """Decode ``paths`` batch by batch in parallel threads, a few batches ahead of the consumer: memory
    holds a few batches, not the folder."""
    workers = os.cpu_count() or 1
    sub_batch = -(-batch // workers)  # each thread decodes a slice of a batch, so one batch uses every core

    def slices() -> Iterator[tuple[int, Sequence[Path]]]:
        for start in range(0, len(paths), batch):
            end = min(start + batch, len(paths))
            yield from ((start, paths[lo : min(lo + sub_batch, end)]) for lo in range(start, end, sub_batch))

    def decode(piece: tuple[int, Sequence[Path]]) -> tuple[int, Sequence[Path], list[Decoded | str]]:
        start, files = piece
        return start, files, [decode_file(Path(f), spec) for f in files]

    decoded = bounded_map(decode, slices(), workers, 3 * workers)
    for _, pieces in itertools.groupby(decoded, key=lambda piece: piece[0]):
        files, images, skipped = [], [], []
        for _, chunk, results in pieces:
            for path, result in zip(chunk, results):
                if isinstance(result, str):
                    skipped.append((str(path), result))
                else:
                    files.append(Path(path))
                    images.append(to_channels(result[0], channels))
        stacked = torch.stack(images) if images else torch.empty(0, channels, spec.size, spec.size, dtype=torch.uint8)
        yield DecodedBatch(files, stacked, skipped)


def decode_images(
    paths: Sequence[Path], spec: DecodeSpec, channels: int | None = None
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]], int]:
    """Decode many files in parallel threads (the decoders release the GIL).

    Returns (N x C x size x size uint8 tensor of the usable files, their indices into ``paths``, the
    skipped files with reasons, the channel count). ``channels=None`` picks 1 when every usable image is
    grayscale, else 3.
    """
    kept, images, skipped, all_gray = [], [], [], True
    for i, (path, result) in enumerate(zip(paths, decode_each(paths, spec))):
        if isinstance(result, str):
            skipped.append((str(path), result))
            continue
        kept.append(i)
        images.append(result[0])
        all_gray &= result[1]
    if channels is None:
        channels = 1 if all_gray and images else 3
    if not images:
        return torch.empty(0, channels, spec.size, spec.size, dtype=torch.uint8), kept, skipped, channels
    return to_channels(torch.stack(images), channels), kept, skipped, channels


# ---------------------------------------------------------------- a folder's image size


def _dimensions(path: Path) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)  # the header is near the start; a large EXIF block before it goes to Pillow below
        if (size := _header_size(head)) is not None:
            return size
        with Image.open(path) as img:  # reads only as far as the header
            return img.size
    except Exception:  # noqa: BLE001  an unreadable file has no size; decoding names it later
        return None


def sample_dimensions(paths: Sequence[Path], max_pixels: int, limit: int = SIZE_SAMPLE) -> list[tuple[int, int]]:
    """(width, height) of up to ``limit`` files spread evenly over ``paths``, read from their headers;
    files without a readable header, or claiming more than ``max_pixels``, are left out."""
    step = max(1, len(paths) / limit)
    picked = [paths[int(i * step)] for i in range(min(limit, len(paths)))]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return [d for d in pool.map(_dimensions, picked) if d is not None and 0 < d[0] * d[1] <= max_pixels]
