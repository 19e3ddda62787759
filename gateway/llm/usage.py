"""Token usage as the providers report it, in one shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

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
    return True


def read_anthropic(usage: Any, into: Usage) -> bool:
    """Merges an Anthropic `usage` object into `into`; False when absent.

    Anthropic reports cache reads and writes apart from `input_tokens`; all three are
    prompt tokens the provider bills, so all three count as input. A field missing
    from this report (message_delta often carries only output_tokens) keeps what an
    earlier event said; the counts are cumulative, never increments.
    """
    if not isinstance(usage, dict):
        return False
    fields = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    if any(usage.get(f) is not None for f in fields):
        into.input_tokens = sum(_count(usage.get(f)) for f in fields)
    if usage.get("output_tokens") is not None:
        into.output_tokens = _count(usage.get("output_tokens"))
    return True


def openai_usage(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total}
