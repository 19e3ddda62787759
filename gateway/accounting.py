"""The budgets of one request, from admission to settle, with a single owner.

`Accounting.admit(call)` runs the route's budget policies in order (this replica's token
buckets, then the global budget on the rate-limit service) and returns an `Admission`.
Admission reserves what is known before the call: the prompt estimate with `tokenize:
true`, else nothing (a check that the budget is above zero); hard budgets reserve the
prompt's upper bound plus the output cap. A refused request is never charged: every
reservation already made for it is handed back.

The admission is an async context manager. Whatever happens inside it, each reservation
is settled (replaced by the usage the provider reported) or released exactly once, and
the call's spend is reported from that same place.
"""

from __future__ import annotations

import logging
from typing import Callable

from gateway.call import Call
from gateway.cel import CelError
from gateway.llm import Unbounded, Usage, estimate_tokens, upper_bound_tokens
from gateway.metrics import GatewayMetrics, Spend
from gateway.policies.budget import BudgetPolicy, Demand, Hold
from gateway.policies.local_ratelimit import LocalLimiter
from gateway.policies.remote_ratelimit import RemoteClient, RemoteLimiter
from gateway.pricing import usd
from gateway.upstream import DEFAULT_TIMEOUT

log = logging.getLogger("tollgate.accounting")

SYSTEMS = {"openAI": "openai", "anthropic": "anthropic"}
# A reservation nobody settles (its replica died) returns to its budget this long after
# the route's timeout could have ended the call; streams that run longer are kept alive.
LEASE_MARGIN = 5.0


class Admission:
    """What one admitted request holds until it settles.

    `usage` is the provider's usage as the response is read (filled in place); on exit
    the holds are settled with it, or released when the provider was never heard from.
    """

    __slots__ = ("call", "holds", "usage", "settled", "_report")

    def __init__(self, call: Call, holds: list[Hold], report: Callable[[Call, Usage, int | None], None]) -> None:
        self.call = call
        self.holds = holds
        self.usage: Usage | None = None
        self.settled = False
        self._report = report

    @property
    def max_tokens(self) -> int | None:
        """The output cap the holds need upstream (elastic hard budgets), if any."""
        caps = [h.max_tokens for h in self.holds if h.max_tokens is not None]
        return min(caps) if caps else None

    def headers(self) -> dict[str, str]:
        """`x-ratelimit-remaining-tokens` / `-requests` / `-usd` (dollars): the least left
        in each measure's budgets after this request's reservation."""
        least: dict[str, int] = {}
        for hold in self.holds:
            for measure, left in hold.remaining().items():
                least[measure] = min(least.get(measure, left), left)
        return {f"x-ratelimit-remaining-{m}": usd(v) if m == "usd" else str(v) for m, v in least.items()}

    def settle(self) -> None:
        """Charges `usage` once, and reports the spend; later calls do nothing."""
        if self.settled:
            return
        self.settled = True
        cost = self.call.observe(self.usage)
        for hold in self.holds:
            hold.settle(self.usage)
        self._report(self.call, self.usage, cost)

    def release(self) -> None:
        """Hands every reservation back once: the call never reached a provider."""
        if self.settled:
            return
        self.settled = True
        for hold in self.holds:
            hold.release()

    async def __aenter__(self) -> "Admission":
        return self

    async def __aexit__(self, *exc) -> None:
        if self.usage is not None:
            self.settle()
        else:
            self.release()


class Accounting:
    def __init__(self, metrics: GatewayMetrics, client: RemoteClient) -> None:
        self.metrics = metrics
        self.local = LocalLimiter()
        self.remote = RemoteLimiter(client, metrics.remote_failure)
        # In order: this replica's buckets first, so a refused request costs no service call.
        self.policies: tuple[BudgetPolicy, ...] = (self.local, self.remote)
        # Metric labels that read only `apiKey.*` are the same for every call of a key.
        self._labels: dict[str, dict[str, str]] = {}
        self._labels_config: object = None

    async def view(self, policy, activation) -> list[dict]:
        """The remote budgets `policy` applies to a key (GET /v1/budget)."""
        return await self.remote.view(policy, activation)

    async def admit(self, call: Call) -> Admission:
        """Reserves on every budget of the call's route; raises BudgetExceeded (or
        RemoteUnavailable under failClosed) having reserved nothing."""
        specs = call.route.policies
        demand = _demand(call, specs.remote_rate_limit is not None)
        holds: list[Hold] = []
        try:
            for policy, spec in zip(self.policies, (specs.local_rate_limits, specs.remote_rate_limit)):
                hold = await policy.admit(spec, demand) if spec else None
                if hold is not None:
                    holds.append(hold)
        except BaseException:
            for hold in holds:
                hold.release()
            raise
        return Admission(call, holds, self._report)

    def _report(self, call: Call, usage: Usage, cost_micros: int | None) -> None:
        provider = call.backend.provider
        self.metrics.spend(Spend(model=model_label(call), system=SYSTEMS.get(provider, provider), usage=usage,
                                 cost_micros=cost_micros or 0, fields=self._fields(call)))

    def _fields(self, call: Call) -> dict[str, str]:
        """The `config.metrics.fields.add` labels of a call."""
        config = call.config
        if not config.metrics_fields:
            return {}
        if config is not self._labels_config:  # a reload: labels may read other things now
            self._labels, self._labels_config = {}, config
        per_key = config.labels_per_key
        key_id = call.identity.key_id if call.identity else ""
        if per_key and key_id in self._labels:
            return self._labels[key_id]
        out = {}
        for label, expr in config.metrics_fields.items():
            try:
                value = expr.evaluate(call.activation)
            except CelError:
                value = ""
            out[label] = "" if value is None else str(value)
        if per_key:
            self._labels[key_id] = out
        return out


OTHER_MODEL = "other"


def model_label(call: Call) -> str:
    """The call's model as a metric label: a name the config knows (an exact backend name,
    a backend's fixed model, a modelCatalog entry), else "other". A route that fixes the
    upstream model accepts any name the client sends; 1,500 made-up names made a 96 MB
    /metrics. Folding them keeps the series count bounded by the config."""
    model = call.model
    if model in call.config.model_catalog or any(model in (b.name, b.model) for b in call.route.backends):
        return model
    return OTHER_MODEL


def _demand(call: Call, remote: bool) -> Demand:
    """What the call asks of its budgets; the prompt's upper bound only where a remote
    budget may need it (a hard one), as walking the prompt costs a few microseconds."""
    req = call.req
    bound, unbounded = 0, ""
    if remote:
        try:
            bound = upper_bound_tokens(req)
        except Unbounded as e:
            bound, unbounded = None, str(e)
    timeout = call.route.policies.request_timeout or DEFAULT_TIMEOUT
    return Demand(
        route=call.route.name, activation=call.activation, model=call.model, price=call.price,
        lease=timeout + LEASE_MARGIN,
        estimate=estimate_tokens(req) if call.backend.tokenize else 0,
        input_bound=bound, unbounded=unbounded, max_output=req.max_output_tokens, choices=req.choices,
    )
