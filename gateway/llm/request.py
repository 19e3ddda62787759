"""A client's LLM request: its type, the checks every dialect shares, and its body re-encoded for upstream."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Dialect(StrEnum):
    """The API the client speaks: `/v1/chat/completions` or `/v1/messages`."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


class BadRequest(ValueError):
    """The client's request is malformed (HTTP 400); the message names the problem."""


@dataclass(slots=True)
class LLMRequest:
    dialect: Dialect
    body: dict[str, Any]
    raw: bytes  # the client's bytes, reused upstream when nothing has to change
    model: str  # "" when the client left it to the gateway's configured model
    stream: bool
    max_output_tokens: int | None  # max_completion_tokens / max_tokens as the client sent it
    wants_usage: bool  # a stream's client asked for usage (always true for Anthropic and non-streams)

    @property
    def choices(self) -> int:
        """How many answers the provider generates (OpenAI's `n`): each may reach the output cap."""
        n = self.body.get("n")
        return n if type(n) is int and n > 1 else 1


def message_list(body: dict[str, Any], roles: frozenset[str]) -> list[dict[str, Any]]:
    """`messages`: a non-empty list of objects whose role is one of `roles`."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in roles:
            shown = repr(role) if isinstance(role, str) else f"a {type(role).__name__}"
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(sorted(roles))}, not {shown[:40]}")
    return messages


def to_json(value: Any) -> bytes:
    # ASCII escapes: the C encoder's fast path, and the bytes need no UTF-8 pass.
    return json.dumps(value, separators=(",", ":")).encode()


def overrides(req: LLMRequest, model: str | None, cap: int | None, cap_field: str) -> dict[str, Any]:
    """The gateway's changes to a body: its model, and an output cap the client may lower."""
    changes: dict[str, Any] = {}
    if model and model != req.model:
        changes["model"] = model
    if cap is not None and (req.max_output_tokens is None or req.max_output_tokens > cap):
        changes[cap_field] = cap
    return changes


def with_changes(req: LLMRequest, changes: dict[str, Any]) -> bytes:
    """The body to send: the client's own bytes when nothing changes (no re-encoding)."""
    return to_json({**req.body, **changes}) if changes else req.raw
