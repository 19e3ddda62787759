"""Anthropic messages: request checks and the body and headers an Anthropic upstream wants."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.llm import shape
from gateway.llm.request import BadRequest, LLMRequest, message_list, overrides, with_changes

PATH = "/v1/messages"
ROLES = frozenset({"user", "assistant"})
VERSION = "2023-06-01"
# Client headers that change what the upstream does; anything else stays at the gateway.
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")


# The ranges Anthropic's API reference gives (see openai.FIELDS).
FIELDS: dict[str, shape.Check] = {
    "max_tokens": shape.integer(1, shape.INT32),
    "temperature": shape.number(0, 1),
    "top_p": shape.number(0, 1),
    "top_k": shape.integer(0, shape.INT32),
    "stop_sequences": shape.strings,
    "metadata": shape.OBJECT,
    "tools": shape.objects,
    "tool_choice": shape.OBJECT,
    "thinking": shape.OBJECT,
}


def check(body: dict[str, Any]) -> None:
    if body.get("max_tokens") is None:
        raise BadRequest("'max_tokens' is required for /v1/messages")
    shape.check_fields(body, FIELDS)
    for i, message in enumerate(message_list(body, ROLES)):
        shape.content_parts(f"messages[{i}]", message.get("content"))
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list) or not all(isinstance(b, dict) for b in system):
            raise BadRequest("'system' must be a string or an array of text blocks")


def max_output_tokens(body: dict[str, Any]) -> int | None:
    return body.get("max_tokens")  # checked by FIELDS


def wants_usage(body: dict[str, Any], stream: bool) -> bool:
    return True  # Anthropic streams always carry usage


def headers(api_key: str | None, client_headers: Mapping[str, str] | None) -> dict[str, str]:
    out = {"content-type": "application/json", "anthropic-version": VERSION}
    if client_headers is not None:
        for name in FORWARDED_HEADERS:
            value = client_headers.get(name)
            if value:
                out[name] = value
    if api_key:
        out["x-api-key"] = api_key
    return out


def upstream_body(req: LLMRequest, model: str | None, cap: int | None) -> bytes:
    return with_changes(req, overrides(req, model, cap, "max_tokens"))
