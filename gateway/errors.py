"""Error bodies in the client's dialect, and the error the request path raises.

The official SDKs choose their exception class from the HTTP status alone
(401 -> AuthenticationError, 429 -> RateLimitError, ...); the body's `type` and
`code` follow each provider's own vocabulary so that code reading them sees
familiar values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

# status -> (type, code) as OpenAI uses them; 5xx not listed fall back to api_error.
_OPENAI_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    502: ("api_error", "bad_gateway"),
    503: ("api_error", "service_unavailable"),
    504: ("api_error", "gateway_timeout"),
}

# status -> error.type in Anthropic's documented list.
_ANTHROPIC_KINDS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class GatewayError(Exception):
    """A request the gateway answers itself: status, a metric reason, a message.

    `body`, when given, is the answer's body already in the client's dialect (an
    upstream error translated for the client); otherwise the message is rendered.
    """

    def __init__(self, status: int, reason: str, message: str,
                 headers: Mapping[str, str] | None = None, body: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = dict(headers) if headers else None
        self.body = body

    def render(self, dialect: str) -> bytes:
        # A trailing newline, as OpenAI's own bodies have: curl's prompt starts on its own line.
        body = self.body if self.body is not None else error_body(dialect, self.status, self.message)
        return body if body.endswith(b"\n") else body + b"\n"


def openai_kind(status: int) -> tuple[str, str | None]:
    kind = _OPENAI_KINDS.get(status)
    if kind is not None:
        return kind
    return ("api_error", None) if status >= 500 else ("invalid_request_error", None)


def anthropic_kind(status: int) -> str:
    return _ANTHROPIC_KINDS.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_body(dialect: str, status: int, message: str, kind: str | None = None,
               code: str | None = None) -> bytes:
    """A JSON error body; `dialect` is a `gateway.llm.Dialect` (a str enum) or its value.

    `kind` replaces the default `type` chosen from the status, `code` OpenAI's default code.
    """
    if dialect == "anthropic":
        error: dict = {"type": kind or anthropic_kind(status), "message": message}
        return json.dumps({"type": "error", "error": error}, separators=(",", ":")).encode()
    default_type, default_code = openai_kind(status)
    error = {"message": message, "type": kind or default_type, "param": None, "code": code or default_code}
    return json.dumps({"error": error}, separators=(",", ":")).encode()
