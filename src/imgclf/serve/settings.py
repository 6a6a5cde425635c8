"""The server's settings, importable without FastAPI (the Python API's signature names them), declared as
training's settings are: the command line's flags and their help come from here."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DEFAULT_MAX_IMAGE_PIXELS, check_declared, setting
from ..export import backend_names


@dataclass(kw_only=True)
class ServerLimits:
    """What any imgclf server allows a client: upload size, image size, deadlines and connections (the model
    server and the studio each add their own settings to these)."""

    max_upload_bytes: int = setting(
        10_000_000,
        help="megabytes a request may send",
        check="positive",
        flag="--max-upload-mb",
        unit=1e6,
        metavar="MB",
    )
    max_image_pixels: int = setting(DEFAULT_MAX_IMAGE_PIXELS, help="pixels an image may claim", check="positive")
    header_timeout: float = setting(
        10.0,
        help="seconds a request's headers may take to arrive (else 408 and the connection closes)",
        check="positive",
    )
    body_timeout: float = setting(
        60.0, help="seconds a request's upload may take after its headers (else 408)", check="positive"
    )
    max_connections: int = setting(
        512, help="connections open at once; the next gets 503 (keep under the open-files limit)", check="positive"
    )
    max_connections_per_client: int = setting(
        64, help="connections open at once from one address; the next gets 503", check="positive"
    )

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass(kw_only=True)
class ServeSettings(ServerLimits):
    """The server's limits and batching; every limit answers 413 or 422 with a JSON error, never a crash."""

    max_images: int = setting(32, help="images per POST /predict", check="positive")
    max_batch: int = setting(64, help="images per forward pass (1: no batching)", check="positive")
    max_wait_ms: float = setting(
        2.0, help="how long an image waits for others to batch with (milliseconds)", check="non_negative"
    )
    top_k: int = setting(5, help="classes per image when a request does not say", check="positive")
    min_confidence: float = setting(
        0.0,
        help="label `unknown` below this calibrated top probability (a request's min_confidence overrides it)",
        check="probability",
        metavar="P",
    )
    threshold: float | None = setting(
        None,
        help="runs with several labels per image: every label from probability P on (a request's threshold "
        "overrides it)",
        check="threshold",
        metavar="P",
        default_text="the run's own per-class thresholds",
    )
    backend: str = setting(
        "torch",
        help="where the forward pass runs: PyTorch, or an exported format's runtime (exported and checked first "
        "where missing; `imgclf benchmark RUN` says which is fastest here)",
        choices=backend_names(),
    )
