"""One request, from its first byte to its settle: what each step of the path reads and adds.

A call reads the replica's config once, at its start, so it sees one consistent config
from authentication to settle even when a reload lands meanwhile. Its CEL activation is
built once, when the request is parsed, and shared by every expression the call
evaluates: conditions, descriptor values, costs and metric labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.cel import Activation
from gateway.pricing import MICROS

if TYPE_CHECKING:
    from starlette.datastructures import Headers

    from gateway.config.runtime import Backend, GatewayConfig, Route
    from gateway.llm import Dialect, LLMRequest, Usage
    from gateway.policies.apikey import Identity
    from gateway.pricing import Price


@dataclass(slots=True)
class Call:
    started: float  # perf_counter at the first byte
    config: "GatewayConfig"
    route: "Route"
    dialect: "Dialect"
    method: str
    path: str
    headers: "Headers"
    identity: "Identity | None" = None
    req: "LLMRequest | None" = None
    backend: "Backend | None" = None
    activation: Activation | None = None
    # The outcome, for tollgate_requests_total: set by whoever answers.
    status: int = 200
    reason: str = "ok"
    # For the access log: what the provider answered, what the call used and cost.
    upstream_status: int | None = None
    usage: "Usage | None" = None
    cost_usd: float = 0.0

    def bind(self, req: "LLMRequest", backend: "Backend") -> None:
        """The parsed request and the backend it goes to; builds the call's activation."""
        self.req, self.backend = req, backend
        metadata = self.identity.metadata if self.identity is not None else None
        self.activation = Activation(metadata, self.method, self.path, self.headers, {"requestModel": req.model})

    @property
    def model(self) -> str:
        """The model the call is served by: the client's, else the backend's."""
        return self.req.model or self.backend.model or self.backend.name

    @property
    def price(self) -> "Price | None":
        return self.config.price_of(self.model, self.backend.model)

    def observe(self, usage: "Usage") -> int | None:
        """Usage is known: `llm.inputTokens` and friends (and `llm.cost`, in USD, when the
        model has a price) become visible to CEL. Returns the cost in micro-dollars."""
        price = self.price
        cost = price.cost_micros(usage) if price is not None else None
        self.usage, self.cost_usd = usage, (cost or 0) / MICROS
        self.activation.update_llm(inputTokens=usage.input_tokens, outputTokens=usage.output_tokens,
                                   cachedInputTokens=usage.cached_input_tokens, totalTokens=usage.total,
                                   **({"cost": cost / MICROS} if cost is not None else {}))
        return cost
