"""``imgclf serve``: a trained model behind a web page and a JSON API (FastAPI under uvicorn).

Needs the ``[serve]`` extra (``pip install 'imgclf[serve]'``); nothing here is imported by ``import imgclf``.
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from ..predict import load
from ..runtime import Log
from .settings import ServeSettings

__all__ = ["ServeSettings", "run_server"]


def run_server(
    run: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log: Log,
) -> None:
    """Load ``run`` (refusing a checkpoint that is not plain weights) and serve it until interrupted."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError:
        raise ConfigError("imgclf serve needs FastAPI and uvicorn: pip install 'imgclf[serve]'") from None
    settings = settings or ServeSettings()
    classifier = load(run, max_image_pixels=settings.max_image_pixels)
    app = create_app(classifier, settings)
    log(f"serving {classifier!r} from {classifier.path}")
    log(f"page: http://{host}:{port}/   API: POST /predict, GET /model, GET /health   docs: http://{host}:{port}/docs")
    uvicorn.run(app, host=host, port=port, log_level="warning")
