"""Writing one answer to the client over ASGI: whole, or as a stream the client may leave.

uvicorn silently drops what is sent after the client went away. A stream learns of it
the way Starlette's StreamingResponse does: a `receive()` kept pending answers
`http.disconnect` once the connection is gone, and `gone` turns true.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

JSON = b"application/json"
EVENT_STREAM = b"text/event-stream; charset=utf-8"


class Reply:
    __slots__ = ("_send", "_receive", "started", "_watch")

    def __init__(self, send, receive) -> None:
        self._send = send
        self._receive = receive
        self.started = False
        self._watch: asyncio.Task | None = None

    async def whole(self, status: int, body: bytes, headers: Mapping[str, str] | None = None,
                    content_type: bytes = JSON) -> None:
        await self.start(status, headers, content_type, len(body))
        await self._send({"type": "http.response.body", "body": body})

    async def start(self, status: int, headers: Mapping[str, str] | None, content_type: bytes,
                    length: int | None = None) -> None:
        raw = [(b"content-type", content_type)]
        if length is not None:
            raw.append((b"content-length", b"%d" % length))
        if headers:
            raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def stream(self, status: int, headers: Mapping[str, str]) -> None:
        """Starts a server-sent event stream, and watching for the client leaving."""
        await self.start(status, {"cache-control": "no-cache", **headers}, EVENT_STREAM)
        self._watch = asyncio.get_running_loop().create_task(self._receive())

    async def send(self, chunk: bytes) -> None:
        if chunk and not self.gone:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def finish(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if not self.gone:
            await self._send({"type": "http.response.body", "body": b""})

    @property
    def gone(self) -> bool:
        """The client disconnected while its stream was being sent."""
        return self._watch is not None and self._watch.done() and not self._watch.cancelled()
