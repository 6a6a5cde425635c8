"""Decoding image files of any common format and mode into uint8 tensors of one size."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import warnings

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF

from ..errors import DataError

try:  # deprecated in torchvision 0.29 for TorchCodec; PIL decodes everything if it goes away
    from torchvision import io as _tv_io
except ImportError:  # pragma: no cover
    _tv_io = None

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)
FAST_SUFFIXES = {".jpg", ".jpeg", ".png"}
DECODE_CHUNK = 512


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


def fit_tensor(image: torch.Tensor, size: int) -> torch.Tensor:
    """C x H x W uint8 resized (shorter side, antialiased bilinear) and centre-cropped to size x size.
    Every path (files, PIL images, tensors) ends here, so training and prediction see the same pixels."""
    if image.shape[-2:] != (size, size):
        image = TF.center_crop(TF.resize(image, [size], antialias=True), [size, size])
    return image


def _from_pil(img: Image.Image, size: int) -> tuple[torch.Tensor, bool]:
    img = ImageOps.exif_transpose(img)
    img, gray = _normalize_mode(img)
    array = np.array(img.convert("RGB"))  # a writable copy: torch.from_numpy shares it
    return fit_tensor(torch.from_numpy(array).permute(2, 0, 1), size), gray


def open_image(path: str | os.PathLike, size: int) -> tuple[torch.Tensor, bool]:
    """Decode one file with PIL to a 3 x size x size uint8 tensor, and whether it was grayscale.

    Raises the PIL/OS error when the file is not a readable image.
    """
    with Image.open(path) as img:
        img.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at reduced scale when the photo is large
        return _from_pil(img, size)


def _fast_decodable(raw: torch.Tensor) -> torch.Tensor | None:
    """torchvision's libjpeg-turbo/libpng decoder for plain 8-bit gray or RGB files; None for anything
    that needs PIL's care (alpha, palettes, 16-bit, CMYK, other formats, errors)."""
    if _tv_io is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            image = _tv_io.decode_image(raw, mode=_tv_io.ImageReadMode.UNCHANGED, apply_exif_orientation=True)
    except (RuntimeError, ValueError):
        return None
    return image if image.dtype == torch.uint8 and image.shape[0] in (1, 3) else None


def _decode_file(path: Path, size: int) -> tuple[torch.Tensor, bool] | str:
    """(3 x size x size uint8, grayscale) or the reason the file is unreadable."""
    try:
        if path.suffix.lower() in FAST_SUFFIXES:
            image = _fast_decodable(_read_bytes(path))
            if image is not None:
                return fit_tensor(image.expand(3, -1, -1), size), image.shape[0] == 1
        return open_image(path, size)
    except _READ_ERRORS as exc:
        return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"


def _read_bytes(path: Path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


def read_image(path: str | os.PathLike | Image.Image, size: int, channels: int) -> torch.Tensor:
    """One image (a file or an opened PIL image) as a C x size x size uint8 tensor; a clear error when unreadable."""
    if isinstance(path, Image.Image):
        return _to_channels(_from_pil(path, size)[0], channels)
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file; check the path")
    result = _decode_file(Path(path), size)
    if isinstance(result, str):
        raise DataError(f"{path}: not a readable image ({result.split(':')[0]}); remove it or convert it to PNG/JPEG")
    return _to_channels(result[0], channels)


def _to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 1:
        # ITU-R 601 luma, the same weights PIL uses for RGB -> L
        weights = torch.tensor([0.299, 0.587, 0.114]).view(-1, 1, 1)
        return (image.float() * weights).sum(-3, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return image.contiguous()


def decode_images(
    paths: Sequence[Path], size: int, channels: int | None = None
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]], int]:
    """Decode many files in parallel threads (the decoders release the GIL).

    Returns (N x C x size x size uint8 tensor of the readable files, their indices into ``paths``,
    the skipped files with reasons, the channel count). ``channels=None`` picks 1 when every readable
    image is grayscale, else 3.
    """
    chunks = [paths[i:i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # one task per chunk: futures cost
        results = [r for chunk in pool.map(lambda c: [_decode_file(Path(p), size) for p in c], chunks) for r in chunk]
    kept, images, skipped, all_gray = [], [], [], True
    for i, (path, result) in enumerate(zip(paths, results)):
        if isinstance(result, str):
            skipped.append((str(path), result))
            continue
        kept.append(i)
        images.append(result[0])
        all_gray &= result[1]
    if channels is None:
        channels = 1 if all_gray and images else 3
    if not images:
        return torch.empty(0, channels, size, size, dtype=torch.uint8), kept, skipped, channels
    return _to_channels(torch.stack(images), channels), kept, skipped, channels


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
