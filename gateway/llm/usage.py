"""Token usage as the providers report it, in one shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0  # every prompt token the provider bills, cached ones included
    output_tokens: int = 0
    cached_input_tokens: int = 0  # of input_tokens, those read from the provider's prompt cache

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def read_openai(usage: Any, into: Usage) -> bool:
    """Copies an OpenAI `usage` object (prompt/completion tokens); False when absent."""
    if not isinstance(usage, dict):
        return False
    into.input_tokens = _count(usage.get("prompt_tokens"))
    into.output_tokens = _count(usage.get("completion_tokens"))
    details = usage.get("prompt_tokens_details")
    into.cached_input_tokens = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return True


def read_anthropic(usage: Any, into: Usage) -> bool:
    """Merges an Anthropic `usage` object into `into`; False when absent.

    Anthropic reports cache reads and writes apart from `input_tokens`; all three are
    prompt tokens the provider bills, so all three count as input, and cache reads are
    also counted as cached (priced at `cachedInput`; cache writes at the input price). A field missing
    from this report (message_delta often carries only output_tokens) keeps what an
    earlier event said; the counts are cumulative, never increments.
    """
    if not isinstance(usage, dict):
        return False
    fields = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    if any(usage.get(f) is not None for f in fields):
        into.input_tokens = sum(_count(usage.get(f)) for f in fields)
        into.cached_input_tokens = _count(usage.get("cache_read_input_tokens"))
    if usage.get("output_tokens") is not None:
        into.output_tokens = _count(usage.get("output_tokens"))
    return True


def openai_usage(usage: Usage) -> dict:
    out: dict = {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                 "total_tokens": usage.total}
    if usage.cached_input_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_input_tokens}
    return out
