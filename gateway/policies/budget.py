"""What the budget policies share: a request's demand, a hold, and a refusal.

A budget policy admits a request by reserving what is known before the call (its
`Demand`) and returns a `Hold`; once the provider reports usage the hold is settled
(reservation replaced by the real figure), or released when the call never happened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.cel import Activation
    from gateway.llm import Usage
    from gateway.pricing import Price


@dataclass(frozen=True, slots=True)
class Demand:
    """What one request asks of the budgets: who asks (its route and CEL variables) and
    what it is known to need before it is sent."""

    route: str  # the route's name: per-replica buckets are per route
    activation: "Activation"  # the call's CEL variables (descriptor values, conditions, costs)
    model: str
    price: "Price | None"  # the model's price in config.modelCatalog
    lease: float  # seconds a reservation is held if nobody settles it (the route's timeout + a margin)
    estimate: int  # prompt estimate (0 without `tokenize`)
    input_bound: int | None  # prompt upper bound, for hard budgets (None: the prompt cannot be bounded)
    unbounded: str  # why not, when input_bound is None
    max_output: int | None  # the client's max_tokens (per answer), if any
    choices: int = 1  # answers generated (OpenAI's n): the output cap applies to each


@dataclass(frozen=True, slots=True)
class Verdict:
    """The state of the most constrained budget; a refusal's headers come from it."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the budget is full again
    retry_after: float  # seconds until this request could pass (0 when allowed)
    tripped: str = ""  # what refused the request, for the error body


class Unresolved(Exception):
    """A budget that must apply cannot be worked out for this request (403): a required
    descriptor's value fails, or a dollar budget meets a model without a price."""


class BudgetExceeded(Exception):
    """A 429: which budget tripped, in plain words, and the headers the client gets."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.tripped)
        self.verdict = verdict

    def headers(self) -> dict[str, str]:
        v = self.verdict
        return {
            "x-ratelimit-limit": str(v.limit),
            "x-ratelimit-remaining": str(v.remaining),
            "x-ratelimit-reset": str(math.ceil(v.reset_after)),
            "retry-after": str(max(1, math.ceil(v.retry_after))),
        }


class Hold(Protocol):
    """One policy's reservation for one admitted request."""

    max_tokens: int | None  # an output cap the policy needs upstream (elastic hard budgets)

    def remaining(self) -> dict[str, int]:
        """The least left after this reservation, per measure (tokens, requests, usd micro-dollars)."""

    def settle(self, usage: "Usage") -> None:
        """Replaces the reservation with what the provider reported."""

    def release(self) -> None:
        """Hands the whole reservation back: the call never reached a provider."""


class BudgetPolicy(Protocol):
    """A kind of budget policy (local, remote), run by accounting for every request."""

    async def admit(self, spec, demand: Demand) -> Hold | None:
        """Reserves `demand` on the budgets `spec` (the route's config of this policy)
        describes; None when nothing applies. Raises BudgetExceeded having reserved nothing."""
