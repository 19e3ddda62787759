"""Parsing a client's LLM request once, validated enough to route and account it."""

from __future__ import annotations

from gateway.llm import anthropic, openai
from gateway.llm.request import BadRequest, Dialect, LLMRequest
from gateway.llm.shape import loads


def parse_request(dialect: Dialect, raw: bytes) -> LLMRequest:
    """Parses and checks a request body; raises `BadRequest` naming the problem."""
    body = loads(raw)
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(body).__name__}")
    model = body.get("model")
    if model is None:
        model = ""
    elif not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean")
    rules = anthropic if dialect == Dialect.ANTHROPIC else openai
    rules.check(body)
    return LLMRequest(
        dialect=dialect, body=body, raw=raw, model=model, stream=stream,
        max_output_tokens=rules.max_output_tokens(body),
        wants_usage=rules.wants_usage(body, stream),
    )
