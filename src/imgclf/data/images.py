"""Decoding image files of any common format and mode into uint8 tensors of one size."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float grayscale: scale to 0..255 instead of clipping (PIL's convert clips)."""
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


def open_image(path: str | os.PathLike, size: int) -> tuple[np.ndarray, bool]:
    """Decode one file to an H x W x 3 uint8 array, resized (shorter side) and centre-cropped to size.

    Raises the PIL/OS error when the file is not a readable image.
    """
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at reduced scale when the photo is large
        return fit_image(img, size)


def fit_image(img: Image.Image, size: int) -> tuple[np.ndarray, bool]:
    """An opened image upright, in 8-bit RGB, resized and centre-cropped; and whether it was grayscale."""
    img = ImageOps.exif_transpose(img)
    img, gray = _normalize_mode(img)
    img = ImageOps.fit(img, (size, size), Image.Resampling.BILINEAR)
    return np.array(img.convert("RGB")), gray  # a writable copy: torch.from_numpy shares it


def read_image(path: str | os.PathLike | Image.Image, size: int, channels: int) -> torch.Tensor:
    """One image (a file or an opened PIL image) as a C x size x size uint8 tensor; a clear error when unreadable."""
    try:
        array, _ = fit_image(path, size) if isinstance(path, Image.Image) else open_image(path, size)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check the path") from None
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}); remove it or convert it to PNG/JPEG") from None
    return _to_channels(torch.from_numpy(array).permute(2, 0, 1), channels)


def _to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 1:
        # ITU-R 601 luma, the same weights PIL uses for RGB -> L
        weights = torch.tensor([0.299, 0.587, 0.114]).view(-1, 1, 1)
        return (image.float() * weights).sum(-3, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return image.contiguous()


def decode_images(
    paths: Sequence[Path], size: int, channels: int | None = None
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]], int]:
    """Decode many files in parallel threads (PIL releases the GIL while decoding).

    Returns (N x C x size x size uint8 tensor of the readable files, their indices into ``paths``,
    the skipped files with reasons, the channel count). ``channels=None`` picks 1 when every readable
    image is grayscale, else 3.
    """

    def decode(path: Path):
        try:
            return open_image(path, size)
        except _READ_ERRORS as exc:
            return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        results = list(pool.map(decode, paths))
    kept, arrays, skipped, all_gray = [], [], [], True
    for i, (path, result) in enumerate(zip(paths, results)):
        if isinstance(result, str):
            skipped.append((str(path), result))
            continue
        kept.append(i)
        arrays.append(result[0])
        all_gray &= result[1]
    if channels is None:
        channels = 1 if all_gray and arrays else 3
    if not arrays:
        return torch.empty(0, channels, size, size, dtype=torch.uint8), kept, skipped, channels
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return _to_channels(images, channels), kept, skipped, channels


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively, image suffixes only) into a sorted list of files."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or folder; check the path")
    return found
