"""The HTTP protocol of ``serve``: uvicorn's (httptools), with a deadline on receiving each request and a bound on
the size of its head.

uvicorn closes a keep-alive connection that stays idle ``timeout_keep_alive`` seconds after an answer, but nothing
bounds the time a request takes to arrive: a connection that sends nothing, or sends its headers a byte at a time
(slowloris), is held open for as long as its client likes, and with it a socket and a slot of the server. Nor does
httptools bound the request line and headers: they grow in memory while they arrive. So:

- Every request must be received whole (request line, headers and body) within ``request_timeout_s`` of the
  moment the connection opened, or the previous answer on it was sent: else the connection is closed.
- A request line plus headers longer than :data:`MAX_HEAD_BYTES` is answered 431 and the connection closed (no
  request of this API needs more than a few hundred bytes of headers).
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

#: The most bytes a request line and its headers may take (about; counted as the connection reads them).
MAX_HEAD_BYTES = 64 * 1024


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request deadline and the head bound of the module docstring; make a
    subclass with the deadline through :func:`guarded_protocol`."""

    request_timeout_s: float = 30.0
    max_head_bytes: int = MAX_HEAD_BYTES

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes: int | None = 0  # bytes read since the last request ended; None while a body arrives
        self._receiving = False  # a request has begun to arrive and is not whole yet
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_bytes is not None and self._head_bytes > self.max_head_bytes:
            self._refuse_head()

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving = True
        if self._deadline is None:  # a request pipelined behind one being answered
            self._arm()

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes = 0
        self._receiving = False
        self._disarm()  # received whole: answering it may take as long as it takes (a long-poll)

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # a request that arrived during the answer starts now
        super().on_response_complete()
        if self.transport.is_closing() or self._deadline is not None:
            return
        if not pipelined or self._receiving:
            self._arm()  # the next request on this keep-alive connection, or the rest of one arriving

    # the deadline
    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("closing the connection of %s: no whole request within %g s (request_timeout_s)",
                     _peer(self.client), self.request_timeout_s)
            self.transport.close()

    def _refuse_head(self) -> None:
        if self.transport.is_closing():
            return
        body = json.dumps({"detail": f"request line and headers larger than {self.max_head_bytes} bytes",
                           "code": "headers_too_large"}).encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"x-content-type-options: nosniff\r\ncontent-length: " + str(len(body)).encode()
                             + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def guarded_protocol(request_timeout_s: float) -> type[GuardedHttpProtocol]:
    """The protocol class uvicorn gets (``Config(http=...)``): :class:`GuardedHttpProtocol` with this deadline."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"request_timeout_s": request_timeout_s})
