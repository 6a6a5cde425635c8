"""Who may talk to the studio, before any route runs (an ASGI middleware).

- **Host**: bound to this machine, the studio answers only requests addressed to a loopback name (a web page
  elsewhere that points a DNS name at 127.0.0.1, "DNS rebinding", gets 403).
- **Token**: with one set (always, when bound to another address), every request carries it: the page's
  cookie (set when it is opened with ``?token=T``), or ``Authorization: Bearer T`` from a script; else 401.
- **Cross-site requests**: a request that changes something (POST, PUT, PATCH, DELETE) must carry the header
  ``X-Imgclf-Studio: 1`` (a form on another site cannot send one, and a script there cannot without a CORS
  preflight the studio never grants) and, where the browser names its origin, come from the studio's own page.
"""

from __future__ import annotations

import hmac
import json
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "imgclf_studio"
HEADER = "x-imgclf-studio"  # what the page (and a script) sends with every request that changes something
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _answer(status: int, error: str, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[dict, dict]:
    body = json.dumps({"error": error, "file": None}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        + (headers or []),
    }
    return start, {"type": "http.response.body", "body": body}


class StudioGuard:
    def __init__(self, app: ASGIApp, token: str | None, loopback_only: bool) -> None:
        self.app, self.token, self.loopback_only = app, token, loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is None and self.token and scope["path"] == "/" and scope["method"] == "GET":
            given = parse_qs(scope.get("query_string", b"").decode()).get("token", [""])[0]
            if given and hmac.compare_digest(given, self.token):  # the link the studio printed: keep it as a cookie
                cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode()),
                                        (b"content-length", b"0")]})  # fmt: skip
                await send({"type": "http.response.body", "body": b""})
                return
        if refusal is not None:
            start, body = _answer(*refusal)
            await send(start)
            await send(body)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        hostname = urlsplit(f"//{host}").hostname or ""
        if self.loopback_only and hostname not in LOOPBACK_NAMES and f"[{hostname}]" not in LOOPBACK_NAMES:
            return 403, f"Host {host!r}: the studio answers requests to 127.0.0.1 or localhost only"
        if self.token and not self.carries_token(scope, headers):
            return 401, "no valid token: open the link the studio printed (…/?token=…), or send Authorization: Bearer"
        if scope["method"] not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != host:
                return 403, f"a request from {origin} may not change anything here (cross-site)"
            if headers.get(HEADER) != "1":
                return 403, f"a request that changes something must send the header {HEADER.title()}: 1"
        return None

    def carries_token(self, scope: Scope, headers: dict[str, str]) -> bool:
        assert self.token is not None
        candidates = []
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            candidates.append(authorization[7:].strip())
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except CookieError:  # a malformed cookie header is no token, not a crash
            pass
        if COOKIE in cookie:
            candidates.append(cookie[COOKIE].value)
        if scope["path"] == "/" and scope["method"] == "GET":
            candidates += parse_qs(scope.get("query_string", b"").decode()).get("token", [])
        return any(hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates)
