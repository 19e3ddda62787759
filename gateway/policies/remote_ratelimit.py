"""`remoteRateLimit`: budgets shared by every replica, kept by the rate-limit service.

The policy picks its target (the first rule whose CEL condition is true), turns each
descriptor's CEL entries into envoy descriptor entries, and reserves on the service
before the call under a reservation id. Once usage is known it settles that id with what
the request actually cost (tokens, requests, or micro-dollars at the model's price); a
request that never reached a provider releases it (a settle of zero). Settling an id is
exactly-once on the service, so the client may retry freely (docs/ratelimit.md). The
network client is handed in (`RemoteClient`), so the policy runs against a fake in tests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import Field, model_validator

from gateway.cel import Activation, CelError, Expr
from gateway.llm import Unbounded
from gateway.policies.budget import BudgetExceeded, Demand, Unresolved, Verdict
from gateway.pricing import MICROS, Price, usd
from gateway.ratelimit_client import RemoteUnavailable, Status, parse_status
from gateway.schema import Cel, Duration, Enforcement, HostPort, Model, NonEmpty, Port, any_case, exactly_one

if TYPE_CHECKING:
    from gateway.llm import Usage

log = logging.getLogger("tollgate.remote")

# The most output tokens an elastic reservation (hard, no max_tokens) may grant one answer:
# far above any model's output limit, so the budget left is what caps it.
ELASTIC_MAX = 2**31
DescriptorType = Literal["tokens", "requests", "usd"]


# --- schema ---------------------------------------------------------------------------

class DescriptorEntry(Model):
    """`{key, value: CEL}`; Kubernetes' agentgateway resources spell them `{name, expression}`."""

    key: NonEmpty | None = None
    """Entry key, matched by the service's domain config, e.g. user_id."""
    value: Cel | None = None
    """CEL giving the entry's value, e.g. apiKey.user_id."""
    name: NonEmpty | None = None
    """Kubernetes' spelling of `key`."""
    expression: Cel | None = None
    """Kubernetes' spelling of `value`."""
    one_of = (("key", "name"), ("value", "expression"))

    @property
    def entry_key(self) -> str:
        return self.key or self.name  # type: ignore[return-value]

    @property
    def entry_value(self) -> Expr:
        return self.value or self.expression  # type: ignore[return-value]


class DescriptorConfig(Model):
    """A budget: the entries the service matches it by, and what a request charges it."""

    entries: list[DescriptorEntry] = Field(min_length=1)
    """`{key, value}` pairs, at least one; the service matches them as envoy does."""
    type: DescriptorType | None = None
    """What is charged: requests (default, one per request), tokens (input + output) or usd (the call's cost at
    config.modelCatalog prices, in micro-dollars)."""
    unit: any_case("tokens", "requests", "usd") | None = None
    """Kubernetes' spelling of `type`: Tokens or Requests (usd too); not with `type`."""
    cost: Cel | None = None
    """CEL: what a request charges instead of its usage, e.g. llm.inputTokens + 2 * llm.outputTokens (in USD for
    a usd descriptor)."""
    enforcement: Enforcement | None = None
    """soft: admit while anything is left, charge the actual usage. hard: reserve the worst case first, never
    exceed. Default: the target's `enforcement`."""
    # A value that fails to evaluate refuses the request (the default for tokens and usd):
    # otherwise the request would run without this budget.
    required: bool | None = None
    """Whether a value that cannot be evaluated refuses the request (403 budget_unresolved) rather than skipping
    this budget; default true for tokens and usd, false for requests."""
    fallback_price: Price | None = None
    """usd: the price, `{input, output, cachedInput?}` in USD per 1M tokens, of models config.modelCatalog
    lacks; without it such a model is refused (403)."""
    at_most_one_of = (("type", "unit", "its Kubernetes spelling "),)

    @property
    def limit_type(self) -> DescriptorType:
        return self.type or self.unit or "requests"

    @property
    def must_apply(self) -> bool:
        return self.required if self.required is not None else self.limit_type != "requests"


class BackendRef(Model):
    """A Kubernetes Service reference; becomes host `name.namespace:port`."""

    name: NonEmpty
    """Service name."""
    namespace: str | None = None
    """Service namespace; without it the host is name:port."""
    port: Port
    """Service port."""
    kind: Literal["Service"] | None = None
    """Only Service."""

    @property
    def host(self) -> str:
        name = f"{self.name}.{self.namespace}" if self.namespace else self.name
        return f"{name}:{self.port}"


_TARGET_FIELDS = ("host", "backend_ref", "domain", "failure_mode", "timeout", "enforcement", "descriptors", "token")


class RemoteTarget(Model):
    """A remote rate-limit call: which service, which domain, which descriptors."""

    host: HostPort | None = None
    """The tollgate-ratelimit service as host:port; or give `backendRef`."""
    backend_ref: BackendRef | None = None
    """The service as a Kubernetes Service reference, instead of `host`."""
    domain: NonEmpty | None = None
    """The service's domain whose limits apply, e.g. token-budgets."""
    failure_mode: Literal["failClosed", "failOpen"] = "failClosed"
    """When the service cannot answer: failClosed (default) refuses the request, failOpen serves it."""
    timeout: Duration = 0.5
    """Time allowed per call to the service: 60s, 1m, 500ms, or seconds; default 500ms."""
    enforcement: Enforcement = "soft"
    """Default of the descriptors' `enforcement`: soft (default) admits while anything is left, hard reserves
    the worst case first and never exceeds."""
    descriptors: list[DescriptorConfig] | None = None
    """The budgets that apply, each matched by its entries."""
    # The default is read by the client (gateway/ratelimit_client.py).
    token: str | None = None
    """Bearer token the service requires on /v1/*; default $TOLLGATE_RATELIMIT_TOKEN, or the file
    $TOLLGATE_RATELIMIT_TOKEN_FILE names."""

    def check_complete(self) -> None:
        exactly_one(self, "host", "backend_ref")
        missing = [n for n in ("domain", "descriptors") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"missing required field '{missing[0]}'")
        if not self.descriptors:
            raise ValueError("'descriptors' must not be empty")

    def complete_unless(self, alternative: str) -> None:
        """Either the target fields are complete, or `alternative` holds them instead."""
        if getattr(self, alternative) is None:
            self.check_complete()
        elif given := self.given(*_TARGET_FIELDS):
            raise ValueError(f"'{alternative}' and '{given[0]}' cannot be combined")

    @property
    def service(self) -> str:
        return self.host or self.backend_ref.host  # type: ignore[union-attr]

    def enforcement_of(self, d: DescriptorConfig) -> Enforcement:
        return d.enforcement or self.enforcement

    @model_validator(mode="after")
    def _hard_is_bounded(self) -> "RemoteTarget":
        # A hard budget reserves what the request can cost at most (its token bound, or that
        # bound at the model's prices); a `cost` expression can weigh tokens any way it
        # likes, so its worst case is unknown and "never exceeds" could not hold.
        for i, d in enumerate(self.descriptors or ()):
            if d.cost is not None and self.enforcement_of(d) == "hard":
                raise ValueError(f"descriptors[{i}]: 'cost' cannot be combined with enforcement: hard (a hard "
                                 "budget reserves the request's worst case, which a cost expression cannot bound; "
                                 "use type: usd with config.modelCatalog prices)")
        return self


class CompleteTarget(RemoteTarget):
    """A rule's target in Kubernetes' spelling; `domain`, `descriptors`, and `host` or `backendRef` are required."""

    @model_validator(mode="after")
    def _complete(self) -> "CompleteTarget":
        self.check_complete()
        return self


class GlobalPolicy(Model):
    """Kubernetes' `policy: {global: {...}}` around a rule's target."""

    global_: CompleteTarget = Field(alias="global")
    """The target: domain, backendRef (or host) and descriptors."""


class ConditionalTarget(RemoteTarget):
    """`{condition, <target fields>}`, or Kubernetes' `{condition, policy: {global: {...}}}`."""

    condition: Cel
    """CEL: the rule applies when true; an error or a non-bool counts as false."""
    policy: GlobalPolicy | None = None
    """Kubernetes' spelling, `{global: {domain, backendRef, descriptors}}`, instead of the target fields."""

    @model_validator(mode="after")
    def _complete(self) -> "ConditionalTarget":
        self.complete_unless("policy")
        return self

    @property
    def target(self) -> RemoteTarget:
        return self.policy.global_ if self.policy else self


class RemoteRateLimit(RemoteTarget):
    """The plain form (target fields), or `{conditional: [...]}` (first true condition wins)."""

    conditional: list[ConditionalTarget] | None = None
    """Rules `{condition, <target fields>}`, instead of the target fields; the first whose condition is true
    applies, and when none is, no budget does."""

    @model_validator(mode="after")
    def _complete(self) -> "RemoteRateLimit":
        self.complete_unless("conditional")
        return self

    @property
    def rules(self) -> list[tuple[Expr | None, RemoteTarget]]:
        if self.conditional is None:
            return [(None, self)]
        return [(c.condition, c.target) for c in self.conditional]

    def target(self, activation: Activation) -> RemoteTarget | None:
        """The first rule whose condition is true; an erroring or non-bool condition is false."""
        for condition, target in self.rules:
            if condition is None or condition.test(activation):
                return target
        return None


# --- runtime --------------------------------------------------------------------------

PERIODS = {"SECOND": "per-second", "MINUTE": "per-minute", "HOUR": "hourly", "DAY": "daily", "WEEK": "weekly",
           "MONTH": "monthly", "YEAR": "yearly"}
MEASURES = {"tokens": "token budget", "requests": "request limit", "usd": "USD budget"}


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One descriptor of one request: its envoy entries, what it charges, at what price."""

    config: DescriptorConfig
    entries: tuple[tuple[str, str], ...]
    hard: bool
    price: Price | None = None  # usd: the model's price (or the descriptor's fallback)

    @property
    def kind(self) -> DescriptorType:
        return self.config.limit_type

    def as_json(self, hits: int | None = None, per_grant: float | None = None) -> dict:
        out: dict = {"entries": [{"key": k, "value": v} for k, v in self.entries]}
        if hits is not None:
            out["hits_addend"] = hits
        if per_grant is not None:
            out["per_grant"] = per_grant
        return out

    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.entries)

    def reservation(self, demand: Demand) -> tuple[int, float | None]:
        """(hits_addend, per_grant) of this descriptor's reservation; `per_grant` makes it
        elastic: it is charged hits_addend + per_grant x the output tokens granted."""
        if self.kind == "requests":
            return 1, None
        if not self.hard:
            return (demand.estimate if self.kind == "tokens" else self.price.bound_micros(demand.estimate)), None
        per_token = demand.choices * (1 if self.kind == "tokens" else self.price.output_micros)
        fixed = demand.input_bound if self.kind == "tokens" else self.price.bound_micros(demand.input_bound)
        if demand.max_output is None:
            return fixed, per_token
        return fixed + math.ceil(demand.max_output * per_token), None

    def charge(self, usage: "Usage", activation: Activation) -> int:
        """What the request costs on this descriptor: its `cost` CEL, else its tokens, one
        request, or micro-dollars at its price."""
        if self.config.cost is not None:
            try:
                value = self.config.cost.evaluate(activation)
                return math.ceil(value * MICROS) if self.kind == "usd" else int(value)
            except (CelError, TypeError, ValueError) as e:
                log.warning("cost expression failed, charging usage: %s", e)
        if self.kind == "usd":
            return self.price.cost_micros(usage)
        return usage.total if self.kind == "tokens" else 1


def resolve(target: RemoteTarget, activation: Activation, price: Price | None = None,
            model: str = "") -> list[Descriptor]:
    """Evaluates every descriptor's entries. One whose CEL fails is skipped, unless it is
    required (raises Unresolved); a usd descriptor needs a price (raises Unresolved)."""
    out = []
    for config in target.descriptors or ():
        try:
            entries = tuple((e.entry_key, _text(e.entry_value.evaluate(activation))) for e in config.entries)
        except CelError as e:
            if config.must_apply:
                raise Unresolved(f"the {config.limit_type} budget of domain {target.domain} cannot apply to this "
                                 f"key: {e}") from e
            log.debug("descriptor skipped: %s", e)
            continue
        priced = price or config.fallback_price
        if config.limit_type == "usd" and priced is None:
            raise Unresolved(f"model {model!r} has no price in config.modelCatalog and a USD budget "
                             f"(domain {target.domain}) applies")
        out.append(Descriptor(config, entries, target.enforcement_of(config) == "hard", priced))
    return out


def _text(value) -> str:
    if value is None:
        raise CelError("the value is null")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def amount(kind: DescriptorType, value: int) -> int | str:
    """A figure as people read it: dollars for usd (micro-dollars on the wire)."""
    return usd(value) if kind == "usd" else value


def exhausted(domain: str, d: Descriptor, s: Status) -> str:
    """A refusal in plain words: `daily token budget for user_id=mike exhausted; resets ...`."""
    period = PERIODS.get(s.unit, "")
    when = s.resets_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + s.reset_after))
    what = f"{period} {MEASURES[d.kind]}".strip()
    return f"{what} for {d.label()} exhausted; resets {when} (domain {domain})"


class RemoteClient(Protocol):
    """The rate-limit service, as this policy needs it (gateway/ratelimit_client.py).
    Every call raises RemoteUnavailable when the service cannot answer in time."""

    async def reserve(self, target: RemoteTarget, rid: str, lease: float, descriptors: list[dict]) -> tuple[int, dict]:
        """(HTTP status, reply body) of a reservation; kept alive past `lease` seconds until settled."""

    def settle(self, target: RemoteTarget, rid: str, descriptors: list[dict]) -> None:
        """Queues the final charges of a reservation; delivered (and retried) in the background."""

    async def budget(self, target: RemoteTarget, descriptors: list[dict]) -> tuple[int, dict]:
        """(HTTP status, reply body) of a read-only view of the descriptors' budgets."""


class RemoteHold:
    """What one request reserved on the service, and how to settle it."""

    __slots__ = ("client", "target", "rid", "descriptors", "statuses", "activation", "max_tokens")

    def __init__(self, client: RemoteClient, target: RemoteTarget, rid: str, descriptors: list[Descriptor],
                 statuses: list[Status], activation: Activation, max_tokens: int | None) -> None:
        self.client, self.target, self.rid, self.descriptors = client, target, rid, descriptors
        self.statuses, self.activation, self.max_tokens = statuses, activation, max_tokens

    def remaining(self) -> dict[str, int]:
        """The least left per measure (tokens, requests, usd) after this reservation."""
        out: dict[str, int] = {}
        for d, s in zip(self.descriptors, self.statuses):
            if s.limit is not None:
                out[d.kind] = min(out.get(d.kind, s.remaining), s.remaining)
        return out

    def settle(self, usage: "Usage") -> None:
        self.client.settle(self.target, self.rid, [d.as_json(d.charge(usage, self.activation))
                                                    for d in self.descriptors])

    def release(self) -> None:
        self.client.settle(self.target, self.rid, [d.as_json(0) for d in self.descriptors])


class RemoteLimiter:
    """Admits requests against the global budgets of a route's `remoteRateLimit`."""

    def __init__(self, client: RemoteClient, on_failure) -> None:
        self.client = client
        self.on_failure = on_failure  # (domain, failure mode): counted in the gateway's metrics

    async def admit(self, policy: RemoteRateLimit, demand: Demand) -> RemoteHold | None:
        activation = demand.activation
        target = policy.target(activation)
        descriptors = resolve(target, activation, demand.price, demand.model) if target is not None else []
        if not descriptors:
            return None
        if demand.input_bound is None and any(d.hard and d.kind != "requests" for d in descriptors):
            raise Unbounded(f"{demand.unbounded}; a hard budget applies (domain {target.domain})")
        wanted = [d.reservation(demand) for d in descriptors]
        rid = secrets.token_hex(12)
        try:
            status, body = await self.client.reserve(
                target, rid, demand.lease, [d.as_json(h, g) for d, (h, g) in zip(descriptors, wanted)])
        except RemoteUnavailable as e:
            self.on_failure(target.domain, target.failure_mode)
            hold = RemoteHold(self.client, target, rid, descriptors, [], activation, None)
            if target.failure_mode == "failOpen":
                # Served without the budget's answer; the settle still charges what the call
                # cost, under the same id, whether or not the reservation landed.
                log.warning("serving without the global budget (failOpen): %s", e)
                return hold
            log.warning("refusing (failClosed): %s", e)
            hold.release()  # the service may still decide it: the id hands it back (or refuses it late)
            raise
        except asyncio.CancelledError:  # the request was cancelled while the service decided
            RemoteHold(self.client, target, rid, descriptors, [], activation, None).release()
            raise
        statuses = [parse_status(s) for s in body.get("statuses", [])]
        if status != 200:
            raise BudgetExceeded(_verdict(target.domain, descriptors, statuses))
        elastic = any(g is not None for _, g in wanted)
        max_tokens = max(1, min(int(body.get("granted", 1)), ELASTIC_MAX)) if elastic else None
        return RemoteHold(self.client, target, rid, descriptors, statuses, activation, max_tokens)

    async def view(self, policy: RemoteRateLimit, activation: Activation) -> list[dict]:
        """The budgets `policy` applies to a key, as GET /v1/budget lists them; charges nothing."""
        target = policy.target(activation)
        if target is None:
            return []
        descriptors = []
        for config in target.descriptors or ():
            try:
                entries = tuple((e.entry_key, _text(e.entry_value.evaluate(activation))) for e in config.entries)
            except CelError:
                continue  # a value that needs the request (its model, its tokens) has none here
            descriptors.append(Descriptor(config, entries, False))
        if not descriptors:
            return []
        _, body = await self.client.budget(target, [d.as_json() for d in descriptors])
        rows = []
        for d, raw in zip(descriptors, body.get("statuses", [])):
            s = parse_status(raw)
            if s.limit is None:
                continue  # no limit in the domain for these entries
            rows.append({"domain": target.domain, "descriptor": d.label(), "unit": d.kind, "period": s.unit.lower(),
                         "limit": amount(d.kind, s.limit), "spent": amount(d.kind, s.spent),
                         "remaining": amount(d.kind, s.remaining), "resetsAt": s.resets_at})
        return rows


def _verdict(domain: str, descriptors: list[Descriptor], statuses: list[Status]) -> Verdict:
    """The refusal of the most constrained descriptor that tripped."""
    pairs = list(zip(descriptors, statuses))
    tripped = [(d, s) for d, s in pairs if s.code == "OVER_LIMIT"]
    d, s = min(tripped or pairs, key=lambda ds: ds[1].remaining)
    return Verdict(allowed=False, limit=s.limit or 0, remaining=max(0, s.remaining),
                   reset_after=s.reset_after, retry_after=s.retry_after, tripped=exhausted(domain, d, s))
