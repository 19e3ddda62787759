"""An upstream's error, as the gateway's own error in the client's dialect.

A provider's error text may quote what it was sent: part of the gateway's upstream key
("Incorrect API key provided: sk-up...x"), a prompt, another tenant's request id. So no
upstream error text reaches a client, on any path (whole bodies, and error events inside
streams, relayed or translated): the client gets the upstream's status, the gateway's own
message, and the upstream's error `type` / `code` only where they are words of the
providers' published vocabularies, which carry no data.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import error_body
from gateway.llm.request import Dialect
from gateway.llm.stream import events, frame

# Error `type` values OpenAI and Anthropic document; anything else is dropped.
KNOWN_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "billing_error",
    "timeout_error", "server_error", "insufficient_quota", "tokens", "requests",
})
# OpenAI's `code` values (Anthropic has none).
KNOWN_CODES = frozenset({
    "invalid_api_key", "rate_limit_exceeded", "insufficient_quota", "model_not_found",
    "context_length_exceeded", "invalid_value", "invalid_type", "unsupported_parameter",
    "unsupported_value", "missing_required_parameter", "string_above_max_length",
    "server_error", "content_filter", "content_policy_violation", "billing_hard_limit_reached",
    "account_deactivated", "unknown_url",
})
# Marks an event that may carry an error ({"error": ...} or "type": "error"). Inside JSON
# strings quotes are escaped, so generated text cannot fake it.
ERROR_MARK = b'"error"'


def _vocabulary(error: Any) -> tuple[str | None, str | None]:
    """(type, code) of an upstream error object, each kept only if it is a known word."""
    if not isinstance(error, dict):
        return None, None
    kind, code = error.get("type"), error.get("code")
    return (kind if kind in KNOWN_TYPES else None), (code if code in KNOWN_CODES else None)


def _error_of(raw: bytes) -> Any:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return body.get("error") if isinstance(body, dict) else None


def sanitized_error(dialect: Dialect, status: int, raw: bytes) -> bytes:
    """A non-2xx upstream body (any shape: JSON of either provider, HTML, nothing) as the
    gateway's error body for `dialect`, with the upstream's status."""
    kind, code = _vocabulary(_error_of(raw))
    words = ", ".join(w for w in (kind, code) if w)
    message = f"upstream answered HTTP {status}" + (f" ({words})" if words else "")
    return error_body(dialect, status, message, kind, code)


def stream_error(dialect: Dialect, error: Any) -> bytes:
    """The data of an error event inside a stream, sanitized for `dialect`."""
    kind, code = _vocabulary(error)
    words = ", ".join(w for w in (kind, code) if w)
    message = "upstream sent an error event" + (f" ({words})" if words else "")
    return error_body(dialect, 500, message, kind, code)


def scrub_events(dialect: Dialect, complete: bytes) -> bytes:
    """Complete SSE events with every error event replaced by its sanitized form; the
    others are kept byte for byte. Called only on blocks that hold ERROR_MARK."""
    out = []
    for name, raw, data in events(complete):
        error = _event_error(name, data) if ERROR_MARK in data else None
        out.append(raw + b"\n\n" if error is None else frame(name, stream_error(dialect, error)))
    return b"".join(out)


def _event_error(name: str | None, data: bytes) -> Any:
    """The error object of an error event (OpenAI's `{"error": ...}`, Anthropic's
    `{"type": "error", "error": ...}`), else None."""
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or "error" not in event:
        return None
    return event["error"] if isinstance(event["error"], dict) else {}
