"""The server's settings, importable without FastAPI (the Python API's signature names them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DEFAULT_MAX_IMAGE_PIXELS


@dataclass
class ServeSettings:
    """The server's limits and batching; every limit answers 413 or 422 with a JSON error, never a crash."""

    max_upload_bytes: int = 10_000_000  # one request's body (10 MB)
    max_images: int = 32  # images in one POST /predict
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # the decoder's bomb guard, per image
    max_batch: int = 64  # images in one forward pass; 1 turns batching off
    max_wait_ms: float = 2.0  # how long the first image of a batch waits for others
    top_k: int = 5  # classes per image when a request does not say
    min_confidence: float = 0.0  # label `unknown` below this calibrated top probability, when a request does not say
    threshold: float | None = None  # multi-label runs: every label from this probability on (None: the run's own)
