"""The access log: one JSON object per request on stderr, on by default.

Its fields follow agentgateway's `config.logging`: `filter` (CEL: log the request only
when true), `fields.remove` (default fields left out) and `fields.add` (`{name: CEL}`).
CEL sees what metric labels see (`apiKey.*`, `request.*`, `llm.*`) plus `response.code`.

The record names the caller by its key id (the first 12 hex digits of the key's sha256,
as `Identity.key_id`) and the key's configured metadata, never by the key; no header
value is logged unless a `fields.add` expression asks for one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import IO, Any

import orjson

from gateway.call import Call
from gateway.cel import Activation, CelError

log = logging.getLogger("tollgate.access")

# Lines are written together at most this long after the first of them (or sooner, past
# FLUSH_BYTES): a write per request was a syscall per request, ~10 % of the local path's
# CPU at c1. envoy buffers its access log the same way (its flush interval is longer).
FLUSH_SECONDS = 0.1
FLUSH_BYTES = 64 * 1024


def record(call: Call, seconds: float) -> dict[str, Any]:
    """The default fields of one finished request."""
    identity, backend, usage = call.identity, call.backend, call.usage
    now = time.time()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
        "route": call.route.name if call.route is not None else None,
        "method": call.method,
        "path": call.path,
        "status": call.status,
        "reason": call.reason,
        "key_id": identity.key_id if identity is not None else None,
        "key_metadata": dict(identity.metadata) if identity is not None and identity.metadata else None,
        "model": call.model if backend is not None else None,
        "backend": backend.name if backend is not None else None,
        "upstream_status": call.upstream_status,
        "input_tokens": usage.input_tokens if usage is not None else None,
        "output_tokens": usage.output_tokens if usage is not None else None,
        "cost_usd": round(call.cost_usd, 9),
        "latency_ms": round(seconds * 1000, 3),
    }


class AccessLog:
    def __init__(self, out: IO[bytes] | None = None) -> None:
        # The binary side of stderr (a replaced stderr, as under a test runner, may have none).
        self.out = out if out is not None else getattr(sys.stderr, "buffer", None) or _Text(sys.stderr)
        self._lines: list[bytes] = []
        self._size = 0
        self._flush_at: asyncio.TimerHandle | None = None

    def write(self, call: Call, seconds: float) -> None:
        """Logs one request as the config's `config.logging` says; never raises."""
        try:
            spec = call.config.access_log
            line = record(call, seconds)
            if spec is not None and (spec.filter is not None or spec.fields.add):
                activation = _activation(call)
                if spec.filter is not None and not spec.filter.test(activation):
                    return
                for name, expr in spec.fields.add.items():
                    line[name] = _value(expr, activation)
            if spec is not None:
                for name in spec.fields.remove:
                    line.pop(name, None)
            self._queue(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        except Exception:  # noqa: BLE001 - a log line must never fail a request
            log.exception("access log: could not write a record")

    def _queue(self, data: bytes) -> None:
        self._lines.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._flush_at is None:
            try:
                self._flush_at = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a direct call): write at once
                self.flush()

    def flush(self) -> None:
        """Writes every queued line, in one write; at shutdown too."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if not self._lines:
            return
        data, self._lines, self._size = b"".join(self._lines), [], 0
        try:
            self.out.write(data)
            self.out.flush()
        except Exception:  # noqa: BLE001
            log.exception("access log: could not write %d bytes", len(data))


class _Text:
    """A text stream written with bytes."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode())

    def flush(self) -> None:
        self.stream.flush()


def _activation(call: Call) -> Activation:
    activation = call.activation
    if activation is None:  # refused before the body was parsed (401, 404, 413, ...)
        metadata = call.identity.metadata if call.identity is not None else None
        activation = call.activation = Activation(metadata, call.method, call.path, call.headers)
    activation.update_response(code=call.status)
    return activation


def _value(expr, activation: Activation) -> Any:
    try:
        return expr.evaluate(activation)
    except CelError:
        return None
