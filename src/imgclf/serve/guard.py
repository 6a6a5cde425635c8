"""Deadlines and connection caps under uvicorn, which has neither for a request still arriving: a client that
never finishes its headers or its upload, or opens connections and sends nothing, would hold a socket (and
a file descriptor) for ever, so a few hundred of them make the server refuse everyone ("Too many open files").

`GuardedH11` is uvicorn's own h11 protocol with three additions, the way reverse proxies bound a request
(nginx's client_header_timeout and client_body_timeout, HAProxy's maxconn):
- a request's headers must arrive within ``header_timeout`` of the connection opening (or of the first byte
  after a kept-alive response), its body within ``body_timeout`` of the headers: else 408 and the socket closes;
- at most ``max_connections`` open at once, ``max_connections_per_client`` from one address: the next one gets
  503 and is closed before it is read;
- each refusal is a warning line in the server's log.
Idle kept-alive connections are uvicorn's (``timeout_keep_alive``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from .settings import ServerLimits

log = logging.getLogger("uvicorn.error")

STATUS_TEXT = {408: "Request Timeout", 503: "Service Unavailable"}


def raw_answer(status: int, error: str) -> bytes:
    """A whole HTTP/1.1 response with the API's JSON error shape, written straight to the socket: it goes out
    before or in the middle of a request, where h11 has no response to send."""
    body = json.dumps({"error": error, "file": None}).encode()
    head = (
        f"HTTP/1.1 {status} {STATUS_TEXT[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def guarded_protocol(settings: ServerLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol bound by ``settings``' deadlines and caps (pass it as ``Config(http=...)``)."""

    class GuardedH11(H11Protocol):
        def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any], **kw: Any) -> None:
            super().__init__(config, server_state, app_state, **kw)
            self.deadline: asyncio.TimerHandle | None = None
            self.waiting_for: str | None = None  # "headers" or "body": what the deadline is for

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            refusal = self.over_cap()
            if refusal:
                self.refuse(503, refusal)
                return
            self.expect("headers")

        def over_cap(self) -> str | None:
            if len(self.connections) > settings.max_connections:
                return f"over the server's {settings.max_connections} open connections; try again shortly"
            host = self.client[0] if self.client else None
            peers = (getattr(other, "client", None) for other in self.connections)
            mine = sum(1 for peer in peers if peer and peer[0] == host)
            if host is not None and mine > settings.max_connections_per_client:
                return (
                    f"over {settings.max_connections_per_client} open connections from {host}; close some or reuse one"
                )
            return None

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.follow_request()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.follow_request()

        def follow_request(self) -> None:
            """Arm or disarm the deadline from how far h11 has read the client's request."""
            if self.transport.is_closing():
                return
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                self.expect("body")
            elif state is h11.IDLE and self.conn.our_state is h11.IDLE:
                # between requests nothing read yet is uvicorn's keep-alive (armed after a response, cancelled
                # by the next byte); a new connection or a first byte starts the clock
                if self.timeout_keep_alive_task is None:
                    self.expect("headers")
                else:
                    self.disarm()
            else:  # the request is in: the answer takes what the model takes
                self.disarm()

        def expect(self, part: str) -> None:
            if self.waiting_for == part:
                return
            self.disarm()
            seconds = settings.header_timeout if part == "headers" else settings.body_timeout
            self.waiting_for = part
            self.deadline = self.loop.call_later(seconds, self.too_slow, part, seconds)

        def disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline, self.waiting_for = None, None

        def too_slow(self, part: str, seconds: float) -> None:
            self.deadline, self.waiting_for = None, None
            self.refuse(408, f"the request's {part} did not arrive within {seconds:g} s")

        def refuse(self, status: int, error: str) -> None:
            where = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.warning("%s - %d: %s", where, status, error)
            state = self.conn.our_state
            if state is h11.SEND_RESPONSE and self.cycle is not None:  # a request in, its answer not begun
                self.cycle.disconnected = True  # the app's receive() now says http.disconnect; its send() is a no-op
                self.cycle.message_event.set()
                state = h11.IDLE  # the refusal is this request's answer
            if state is h11.IDLE:  # else an answer has gone out (in part): cutting the connection is all that is left
                self.transport.write(raw_answer(status, error))
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

    return GuardedH11
