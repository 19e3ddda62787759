"""What a call costs in dollars: `config.modelCatalog` prices, exact to the micro-dollar.

Prices are USD per million tokens, which is micro-dollars per token. They are read as
decimals (0.15 stays 0.15, not the binary float nearest to it), and a call's cost is
rounded up to a whole micro-dollar once: the budget on the rate-limit service counts
integer micro-dollars, and the cost metric adds the same integers, so the two agree
to the micro-dollar however many calls there are.
"""

from __future__ import annotations

import math
from decimal import Decimal
from functools import cached_property

from pydantic import Field

from gateway.llm import Usage
from gateway.schema import Model

MICROS = 1_000_000  # micro-dollars in a dollar


class Price(Model):
    """USD per 1M tokens: input, output, and cached input where the provider reports it."""

    input: float = Field(ge=0)
    """USD per 1M input (prompt) tokens."""
    output: float = Field(ge=0)
    """USD per 1M output tokens."""
    cached_input: float | None = Field(default=None, ge=0)
    """USD per 1M cached prompt tokens, where the provider reports them; default: the input price."""

    @cached_property
    def _rates(self) -> tuple[Decimal, Decimal, Decimal]:
        cached = self.input if self.cached_input is None else self.cached_input
        return Decimal(repr(self.input)), Decimal(repr(self.output)), Decimal(repr(cached))

    def cost_micros(self, usage: Usage) -> int:
        """What `usage` costs, in micro-dollars, rounded up."""
        rate_in, rate_out, rate_cached = self._rates
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        exact = (usage.input_tokens - cached) * rate_in + cached * rate_cached + usage.output_tokens * rate_out
        return math.ceil(exact)

    def bound_micros(self, input_tokens: int) -> int:
        """The most `input_tokens` of prompt can cost, whichever of them are cached."""
        rate_in, _, rate_cached = self._rates
        return math.ceil(input_tokens * max(rate_in, rate_cached))

    @property
    def output_micros(self) -> float:
        """Micro-dollars per output token (may be fractional: $0.60 per 1M is 0.6)."""
        return float(self._rates[1])


def usd(micros: int) -> str:
    """Micro-dollars as a dollar figure with all six decimals, for headers and bodies."""
    sign = "-" if micros < 0 else ""
    whole, part = divmod(abs(micros), MICROS)
    return f"{sign}{whole}.{part:06d}"
