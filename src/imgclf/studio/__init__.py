"""``imgclf studio [DIR]``: the runs and data in DIR in a local web page, live: start, stop and resume training,
compare runs, review the doctor's findings, try a model, make a dataset. Needs the ``[serve]`` extra; nothing
here is imported by ``import imgclf``, and the studio's process imports no training code (work runs in child
processes).
"""

from __future__ import annotations

import ipaddress
import os
import secrets

from ..errors import ConfigError
from ..runtime import Log
from .settings import StudioSettings

__all__ = ["StudioSettings", "run_studio"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_studio(
    folder: str | os.PathLike = ".",
    *,
    host: str = "127.0.0.1",
    port: int = 8500,
    settings: StudioSettings | None = None,
    log: Log,
) -> None:
    """Serve the studio over ``folder`` until interrupted (training it started goes on)."""
    from ..serve import bind, require_server_stack, run_app

    require_server_stack("studio")
    from .app import create_app

    settings = settings or StudioSettings()
    loopback = is_loopback(host)
    if not loopback and not settings.token:  # another machine can reach it: nobody without the token gets in
        settings.token = secrets.token_urlsafe(24)
    try:
        app = create_app(folder, settings, loopback_only=loopback)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    link = f"http://{shown}:{port}/" + (f"?token={settings.token}" if settings.token else "")
    log(f"imgclf studio on {os.path.abspath(folder)}: {link}   API docs: http://{shown}:{port}/docs")
    if settings.token:
        log("every request needs the token: open the link above, or send `Authorization: Bearer TOKEN`")
    run_app(app, sock, settings, log, graceful_seconds=1)  # a live page's event stream stays open: 1 s at ^C
