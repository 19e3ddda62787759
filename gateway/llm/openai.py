"""OpenAI chat completions: request checks and the body sent to an OpenAI upstream."""

from __future__ import annotations

from typing import Any

from gateway.llm import shape
from gateway.llm.request import LLMRequest, message_list, overrides, with_changes

PATH = "/v1/chat/completions"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# The ranges OpenAI's API reference gives; a field outside them is refused here, before
# budgets are reserved (max tokens bound the reservation) or anything is sent.
FIELDS: dict[str, shape.Check] = {
    "max_tokens": shape.integer(1, shape.INT32),
    "max_completion_tokens": shape.integer(1, shape.INT32),
    "n": shape.integer(1, 128),
    "temperature": shape.number(0, 2),
    "top_p": shape.number(0, 1),
    "presence_penalty": shape.number(-2, 2),
    "frequency_penalty": shape.number(-2, 2),
    "seed": shape.integer(-shape.INT64 - 1, shape.INT64),
    "top_logprobs": shape.integer(0, 20),
    "logprobs": shape.BOOLEAN,
    "parallel_tool_calls": shape.BOOLEAN,
    "user": shape.STRING,
    "stop": shape.string_or_strings,
    "stream_options": shape.OBJECT,
    "response_format": shape.OBJECT,
    "logit_bias": shape.OBJECT,
    "metadata": shape.OBJECT,
    "tools": shape.objects,
    "tool_choice": shape.STRING_OR_OBJECT,
}
MESSAGE_FIELDS: dict[str, shape.Check] = {
    "name": shape.STRING, "tool_call_id": shape.STRING, "tool_calls": shape.objects,
}
TOOL_CALL_FIELDS: dict[str, shape.Check] = {"id": shape.STRING, "function": shape.OBJECT}
FUNCTION_FIELDS: dict[str, shape.Check] = {"name": shape.STRING, "arguments": shape.STRING}


def check(body: dict[str, Any]) -> None:
    shape.check_fields(body, FIELDS)
    for i, message in enumerate(message_list(body, ROLES)):
        where = f"messages[{i}]"
        shape.content_parts(where, message.get("content"))
        shape.check_fields(message, MESSAGE_FIELDS, f"{where}.")
        for j, call in enumerate(message.get("tool_calls") or ()):
            shape.check_fields(call, TOOL_CALL_FIELDS, f"{where}.tool_calls[{j}].")
            shape.check_fields(call.get("function") or {}, FUNCTION_FIELDS, f"{where}.tool_calls[{j}].function.")
    for j, tool in enumerate(body.get("tools") or ()):
        function = tool.get("function")
        if function is not None:
            shape.OBJECT(f"tools[{j}].function", function)
            shape.check_fields(function, {"name": shape.STRING, "description": shape.STRING,
                                          "parameters": shape.OBJECT}, f"tools[{j}].function.")


def max_output_tokens(body: dict[str, Any]) -> int | None:
    newer = body.get("max_completion_tokens")
    return newer if newer is not None else body.get("max_tokens")  # both checked by FIELDS


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
