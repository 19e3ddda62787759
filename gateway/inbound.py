"""The LLM listener's HTTP/1.1 connections: uvicorn's httptools protocol with header limits.

uvicorn's httptools protocol puts no bound on request headers, and httptools joins a
header's value piece by piece (bytes concatenation, quadratic): one 40 MB header cost
4 s of CPU on the event loop, stalling every other client, and a client that sent half
its headers held its connection forever. This subclass adds what a front proxy would:

- the bytes of a request's head (request line and headers) are counted as they arrive,
  before httptools sees them, so an oversized head is refused after `maxHeaderSize`
  bytes: 431 with a JSON error, connection closed;
- the number of headers is checked once they are complete: 431 as well;
- the head must arrive within `headerTimeout` of the connection opening (or of the first
  byte of a kept-alive connection's next request): else 408 with a JSON error, closed.

Why a subclass rather than a proxy in front or a protocol of our own: it keeps uvicorn's
request/response cycle, flow control and graceful shutdown as they are, and costs an
addition and a comparison per packet and per header plus one timer per request (figures
in bench/inbound_bench.py). Limits are read from the replica's config when a connection
opens, so a reload applies to new connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import error_body

HEAD_END = b"\r\n\r\n"
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class HeadRefused(Exception):
    """Raised inside an httptools callback to stop parsing a request that broke a limit."""


class GuardedProtocol(HttpToolsProtocol):
    # (max head bytes, max header count, head timeout in seconds); set per listener.
    limits: Callable[[], tuple[int, int, float]]

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._max_bytes, self._max_count, self._timeout = self.limits()
        self._refusal: tuple[int, str] | None = None
        self._in_head = True  # the next bytes belong to a request's head
        self._head_bytes = 0
        self._head_started: float | None = self.loop.time()
        # One timer per connection, re-armed when it fires, rather than one per request:
        # arming and cancelling a timer for every request cost ~2 us of the 7 us measured.
        self._deadline: Any = self.loop.call_later(self._timeout, self._check_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        if self._in_head:
            if self._head_started is None:  # the first byte of a kept-alive connection's next request
                self._head_started = self.loop.time()
            self._head_bytes += len(data)
            if self._head_bytes > self._max_bytes and not self._head_ends_within(data):
                self._refuse(431, f"request headers exceed the {self._max_bytes}-byte limit")
                return
        super().data_received(data)

    def _head_ends_within(self, data: bytes) -> bool:
        """The head ends in `data` within the limit (the rest of `data` is body or the next
        request). A terminator split across two packets counts the packets whole: a head
        within 3 bytes of the limit may then be refused."""
        end = data.find(HEAD_END)
        return end >= 0 and self._head_bytes - len(data) + end + len(HEAD_END) <= self._max_bytes

    # --- httptools callbacks ----------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head, self._head_started = False, None
        # Counted once complete: the byte limit already bounds how many can arrive
        # (64 KiB of 4-byte headers is 16,384), so no per-header callback is needed.
        if len(self.headers) > self._max_count:
            self._refusal = (431, f"request has more than {self._max_count} headers")
            raise HeadRefused  # httptools stops parsing; uvicorn calls send_400_response
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parse error; a callback that refused the head answers instead."""
        if self._refusal is not None:
            status, message = self._refusal
            self._refusal = None
            self._refuse(status, message)
        else:
            super().send_400_response(msg)

    # --- the deadline and refusals ----------------------------------------------------

    def _check_deadline(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        waited = self.loop.time() - self._head_started if self._head_started is not None else 0.0
        busy = self.cycle is not None and not self.cycle.response_complete  # a response is being written
        if self._in_head and not busy and waited >= self._timeout:
            self._refuse(408, f"request headers not received within {self._timeout:g}s")
            return
        self._deadline = self.loop.call_later(max(self._timeout - waited, 0.05), self._check_deadline)

    def _refuse(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        # The path decides the dialect when the request line has arrived; else OpenAI's.
        dialect = "anthropic" if b"/v1/messages" in getattr(self, "url", b"") else "openai"
        body = error_body(dialect, status, message)
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" \
               b"connection: close\r\n\r\n" % (status, REASONS[status], len(body))
        self.transport.write(head + body)
        self.transport.close()


def guarded_protocol(limits: Callable[[], tuple[int, int, float]]) -> type[GuardedProtocol]:
    """The protocol class of one listener; `limits()` is read as each connection opens."""
    return type("ListenerProtocol", (GuardedProtocol,), {"limits": staticmethod(limits)})
