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


@dataclass(frozen=True, slots=True)
class Demand:
    """What one request asks of the budgets: who asks (its route and CEL variables) and
    what it is known to need before it is sent."""

    route: str  # the route's name: per-replica buckets are per route
    activation: "Activation"  # the call's CEL variables (descriptor values, conditions, costs)
    estimate: int  # prompt estimate (0 without `tokenize`)
    input_bound: int  # prompt upper bound, for hard budgets (0 when none applies)
    max_output: int | None  # the client's max_tokens, if any


@dataclass(frozen=True, slots=True)
class Verdict:
    """The state of the most constrained budget; a refusal's headers come from it."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the budget is full again
    retry_after: float  # seconds until this request could pass (0 when allowed)
    tripped: str = ""  # what refused the request, for the error body


class BudgetExceeded(Exception):
    """A 429: which budget tripped and the headers the client gets."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"rate limit exceeded: {verdict.tripped}")
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

    def remaining_tokens(self) -> int | None:
        """Tokens left in its tightest token budget after this reservation, if it has one."""

    def settle(self, usage: "Usage") -> None:
        """Replaces the reservation with the usage the provider reported."""

    def release(self) -> None:
        """Hands the whole reservation back: the call never reached a provider."""


class BudgetPolicy(Protocol):
    """A kind of budget policy (local, remote), run by accounting for every request."""

    async def admit(self, spec, demand: Demand) -> Hold | None:
        """Reserves `demand` on the budgets `spec` (the route's config of this policy)
        describes; None when nothing applies. Raises BudgetExceeded having reserved nothing."""
