"""OpenAI chat completions: request checks and the body sent to an OpenAI upstream."""

from __future__ import annotations

from typing import Any

from gateway.llm.request import BadRequest, LLMRequest, message_list, optional_count, overrides, with_changes

PATH = "/v1/chat/completions"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def check_messages(body: dict[str, Any]) -> None:
    message_list(body, ROLES)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object")


def max_output_tokens(body: dict[str, Any]) -> int | None:
    newer = optional_count(body, "max_completion_tokens")
    older = optional_count(body, "max_tokens")
    return newer if newer is not None else older


def wants_usage(body: dict[str, Any], stream: bool) -> bool:
    if not stream:
        return True
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def limit_field(body: dict[str, Any]) -> str:
    """The output cap field to write: the one the client used, else the current one.

    `max_completion_tokens` is what OpenAI's current models accept (the reasoning
    models reject `max_tokens`), so it is the default.
    """
    if "max_tokens" in body and "max_completion_tokens" not in body:
        return "max_tokens"
    return "max_completion_tokens"


def upstream_body(req: LLMRequest, model: str | None, cap: int | None) -> bytes:
    changes = overrides(req, model, cap, limit_field(req.body))
    if req.stream and not req.wants_usage:
        # Usage is what accounting charges; the extra chunk is dropped on the way back.
        changes["stream_options"] = {**(req.body.get("stream_options") or {}), "include_usage": True}
    return with_changes(req, changes)
