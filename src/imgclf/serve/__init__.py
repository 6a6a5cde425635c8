"""``imgclf serve``: a trained model behind a web page and a JSON API (FastAPI under uvicorn).

Needs the ``[serve]`` extra (``pip install 'imgclf[serve]'``); nothing here is imported by ``import imgclf``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Any

from ..errors import ConfigError
from ..runtime import Log
from .settings import ServerLimits, ServeSettings

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

    require_server_stack("serve")
    from .app import create_app

    settings = settings or ServeSettings()
    classifier = load(run, max_image_pixels=settings.max_image_pixels)
    classifier.set_threshold(settings.threshold)  # multi-label: the server's one threshold, where given
    if settings.backend != "torch":  # /explain's Grad-CAM still runs on the PyTorch model, which stays loaded
        from ..export import exported_backend

        classifier.backend = exported_backend(run, settings.backend, log)
    app = create_app(classifier, settings)
    sock = bind(host, port)  # before saying "serving": a busy port is one line, not a message and an exit
    log(f"serving {classifier!r} from {classifier.path} on {settings.backend}")
    log(f"page: http://{host}:{port}/   API: POST /predict, GET /model, GET /health   docs: http://{host}:{port}/docs")
    run_app(app, sock, settings, log)


def require_server_stack(command: str) -> None:
    """FastAPI and uvicorn are there, or the one line that says how to install them."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(f"imgclf {command} needs FastAPI and uvicorn: pip install 'imgclf[serve]'") from None


def run_app(app: Any, sock: socket.socket, limits: ServerLimits, log: Log, graceful_seconds: int | None = None) -> None:
    """Serve ``app`` on ``sock`` until interrupted, under the guarded h11 protocol (``limits``' deadlines and
    caps), a log line per request; ``graceful_seconds``: how long open responses (event streams) get at ^C."""
    import uvicorn

    from .guard import guarded_protocol

    open_files_for(limits.max_connections, log)
    config = uvicorn.Config(
        app, http=guarded_protocol(limits), log_level="warning", timeout_graceful_shutdown=graceful_seconds
    )
    logging.getLogger("uvicorn.access").setLevel(logging.INFO)  # a line per request; uvicorn's own chatter stays off
    uvicorn.Server(config).run(sockets=[sock])


def open_files_for(connections: int, log: Log) -> None:
    """Raise this process's open-files limit to hold ``connections`` sockets beside the model's own files, as
    far as the hard limit allows (Linux's usual soft limit is 1,024); say so where it cannot."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return
    needed = connections + 128  # the model, its libraries, the log, uvicorn's own
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        if raised < needed:
            log(f"warning: the open-files limit ({hard}) is below `max_connections` {connections} + 128; lower it")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``, or a one-line error naming the setting to change."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"`port` {port}: a TCP port is 1 to 65535 (above 1023 without privileges)")
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
