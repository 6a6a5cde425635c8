"""A generated corpus of bad and odd image files, each with what imgclf must do with it.

``UNUSABLE`` kinds must be skipped (in a folder) or refused (named alone) with one line, never crash the
process; ``USABLE`` kinds must be decoded correctly. The decompression bomb is the one from the issue: a
PNG whose header claims 60,000 x 60,000 pixels with a body of a few bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG (right CRCs) whose compressed body holds 10 bytes: far too few for its size."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + _chunk(b"IEND", b"")
    )


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _photo(width: int = 48, height: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _jpeg_with_frame_size(width: int, height: int) -> bytes:
    data = bytearray(_encoded(_photo(), "JPEG", quality=90))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def _gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encoded(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _exif_rotated() -> bytes:
    """A 40x20 landscape JPEG, left half red, whose EXIF says: rotate 90 degrees clockwise to view."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded(image, "JPEG", quality=95, exif=exif.tobytes())


def _animated() -> bytes:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    return _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _rgba_transparent() -> bytes:
    return _encoded(Image.new("RGBA", (16, 16), (0, 0, 0, 0)), "PNG")


def _gray16() -> bytes:
    return _encoded(Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)), "PNG")


UNUSABLE: dict[str, bytes] = {
    "bomb.png": png_claiming(60_000, 60_000),  # the decompression bomb: refused from its header
    "short_body.png": png_claiming(300, 300),  # under the limit, but it crashed torchvision's libpng (SIGSEGV)
    "truncated.png": _encoded(_photo(), "PNG")[:300],
    "truncated.jpg": _encoded(_photo(400, 300), "JPEG", quality=90)[:2000],
    "bomb.jpg": _jpeg_with_frame_size(65_000, 65_000),  # libjpeg would allocate 12.7 GB for it
    "bomb.gif": _gif_claiming(65_535, 65_535),
    "empty.png": b"",
    "text.jpg": b"this is not an image\n" * 10,
    "random.gif": np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    "notes.txt": b"a file that is not an image, in a class folder",
}

USABLE: dict[str, bytes] = {
    "exif_rotated.jpg": _exif_rotated(),
    "animated.gif": _animated(),
    "transparent.png": _rgba_transparent(),
    "white16.png": _gray16(),
    "cmyk.jpg": _encoded(_photo().convert("CMYK"), "JPEG"),
    "strip.png": _encoded(_photo(4000, 1), "PNG"),  # 4000:1, cropped before resizing
    "tiny.png": _encoded(_photo(1, 1), "PNG"),
    "png_named.jpg": _encoded(_photo(), "PNG"),  # the content decides, not the suffix
    "palette.png": _encoded(_photo().convert("P"), "PNG"),
}

HIDDEN = ".hidden.png"  # never read: neither used nor skipped, by training or prediction alike


def write_corpus(folder: Path) -> Path:
    """Every kind into ``folder``, plus a hidden file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in {**UNUSABLE, **USABLE, HIDDEN: png_claiming(60_000, 60_000)}.items():
        (folder / name).write_bytes(data)
    return folder
