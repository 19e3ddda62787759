"""Server-sent events framing: cut a byte stream at event boundaries, read events.

Upstream chunks end anywhere (mid-line, mid-UTF-8 character); only complete events
are parsed, and a partial one waits for the rest. Events end with a blank line,
`\\n\\n` or `\\r\\n\\r\\n`.
"""

from __future__ import annotations

from collections.abc import Iterator

DONE = b"data: [DONE]\n\n"


def complete_end(data: bytes) -> int:
    """Offset just past the last complete event in `data`; 0 when there is none."""
    end = data.rfind(b"\n\n")
    end = end + 2 if end >= 0 else 0
    if b"\r" in data:
        crlf = data.rfind(b"\r\n\r\n")
        if crlf >= 0 and crlf + 4 > end:
            end = crlf + 4
    return end


# Complete events a buffer remembers, for counting what a stream that broke off had
# relayed: a stream's own bytes, held only until it ends (8 MiB is ~2 M tokens of text).
KEEP_BYTES = 8 << 20


class EventBuffer:
    """Holds the partial event at the end of what has arrived so far, and remembers the
    complete events handed out (up to KEEP_BYTES)."""

    __slots__ = ("pending", "kept", "_kept_bytes")

    def __init__(self) -> None:
        self.pending = b""
        self.kept: list[bytes] = []
        self._kept_bytes = 0

    def take(self, chunk: bytes) -> bytes:
        """The complete events now available (ending with their blank line), or b""."""
        data = self.pending + chunk if self.pending else chunk
        end = complete_end(data)
        if end == len(data):
            self.pending = b""
        else:
            self.pending, data = data[end:], data[:end]
        if data and self._kept_bytes < KEEP_BYTES:
            self.kept.append(data)
            self._kept_bytes += len(data)
        return data

    def rest(self) -> bytes:
        """What is left when the stream ends, framed as a last event (or b"")."""
        rest, self.pending = self.pending, b""
        return rest + b"\n\n" if rest.strip() else b""


def events(block: bytes) -> Iterator[tuple[str | None, bytes, bytes]]:
    """(event name, the event's own bytes without its blank line, its data) per event."""
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
    for raw in block.split(b"\n\n"):
        if not raw:
            continue
        name = None
        data = []
        for line in raw.split(b"\n"):
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
        yield name, raw, b"\n".join(data)


def frame(name: str | None, data: bytes) -> bytes:
    """One event as SSE bytes (single-line JSON data)."""
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + data + b"\n\n"
