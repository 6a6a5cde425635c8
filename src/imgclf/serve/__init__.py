"""``imgclf serve``: a trained model behind a web page and a JSON API (FastAPI under uvicorn).

Needs the ``[serve]`` extra (``pip install 'imgclf[serve]'``); nothing here is imported by ``import imgclf``.
"""

from __future__ import annotations

import errno
import os
import socket

from ..errors import ConfigError
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
    from ..predict import load

    try:
        import uvicorn

        from .app import create_app
    except ImportError:
        raise ConfigError("imgclf serve needs FastAPI and uvicorn: pip install 'imgclf[serve]'") from None
    settings = settings or ServeSettings()
    classifier = load(run, max_image_pixels=settings.max_image_pixels)
    classifier.set_threshold(settings.threshold)  # multi-label: the server's one threshold, where given
    app = create_app(classifier, settings)
    sock = bind(host, port)  # before saying "serving": a busy port is one line, not a message and an exit
    log(f"serving {classifier!r} from {classifier.path}")
    log(f"page: http://{host}:{port}/   API: POST /predict, GET /model, GET /health   docs: http://{host}:{port}/docs")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``, or a one-line error naming the setting to change."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(
            f"`host` {host}: not an address of this machine ({exc.strerror}); use e.g. 127.0.0.1"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses the port at once
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"`port` {port}: already in use on {host}; choose another `port`") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"`port` {port}: needs privileges on {host}; choose a `port` above 1023") from None
        raise ConfigError(f"`host` {host}: cannot listen there ({exc.strerror}); use e.g. 127.0.0.1") from None
    return sock
