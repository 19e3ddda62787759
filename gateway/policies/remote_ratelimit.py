"""`remoteRateLimit`: budgets shared by every replica, kept by the rate-limit service.

The policy picks its target (the first rule whose CEL condition is true), turns each
descriptor's CEL entries into envoy descriptor entries, reserves on the service before
the call and settles the difference once usage is known (docs/ratelimit.md). The
network client is handed in (`RemoteClient`), so the policy runs against a fake in tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import Field, model_validator

from gateway.cel import Activation, CelError, Expr
from gateway.policies.budget import BudgetExceeded, Demand, Verdict
from gateway.ratelimit_client import RemoteUnavailable
from gateway.schema import Cel, Duration, Enforcement, HostPort, LimitType, Model, NonEmpty, Port, any_case, \
    exactly_one

if TYPE_CHECKING:
    from gateway.llm import Usage

log = logging.getLogger("tollgate.remote")

# What an elastic (hard, no max_tokens) reservation may take at most: the whole budget.
ELASTIC_MAX = 2**53


# --- schema ---------------------------------------------------------------------------

class DescriptorEntry(Model):
    """`{key, value: CEL}`; Kubernetes' agentgateway resources spell them `{name, expression}`."""

    key: NonEmpty | None = None
    value: Cel | None = None
    name: NonEmpty | None = None
    expression: Cel | None = None
    one_of = (("key", "name"), ("value", "expression"))

    @property
    def entry_key(self) -> str:
        return self.key or self.name  # type: ignore[return-value]

    @property
    def entry_value(self) -> Expr:
        return self.value or self.expression  # type: ignore[return-value]


class DescriptorConfig(Model):
    entries: list[DescriptorEntry] = Field(min_length=1)
    type: LimitType | None = None
    unit: any_case("tokens", "requests") | None = None  # Kubernetes: Tokens|Requests
    cost: Cel | None = None
    enforcement: Enforcement | None = None
    at_most_one_of = (("type", "unit", "its Kubernetes spelling "),)

    @property
    def limit_type(self) -> LimitType:
        return self.type or self.unit or "requests"


class BackendRef(Model):
    """A Kubernetes Service reference; becomes host `name.namespace:port`."""

    name: NonEmpty
    namespace: str | None = None
    port: Port
    kind: Literal["Service"] | None = None

    @property
    def host(self) -> str:
        name = f"{self.name}.{self.namespace}" if self.namespace else self.name
        return f"{name}:{self.port}"


_TARGET_FIELDS = ("host", "backend_ref", "domain", "failure_mode", "timeout", "enforcement", "descriptors")


class RemoteTarget(Model):
    """A remote rate-limit call: which service, which domain, which descriptors."""

    host: HostPort | None = None
    backend_ref: BackendRef | None = None
    domain: NonEmpty | None = None
    failure_mode: Literal["failClosed", "failOpen"] = "failClosed"
    timeout: Duration = 0.5
    enforcement: Enforcement = "soft"
    descriptors: list[DescriptorConfig] | None = None

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


class CompleteTarget(RemoteTarget):
    @model_validator(mode="after")
    def _complete(self) -> "CompleteTarget":
        self.check_complete()
        return self


class GlobalPolicy(Model):
    global_: CompleteTarget = Field(alias="global")


class ConditionalTarget(RemoteTarget):
    """`{condition, <target fields>}`, or Kubernetes' `{condition, policy: {global: {...}}}`."""

    condition: Cel
    policy: GlobalPolicy | None = None

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

@dataclass(frozen=True, slots=True)
class Descriptor:
    """One descriptor of one request: its envoy entries and what it charges."""

    config: DescriptorConfig
    entries: tuple[tuple[str, str], ...]
    hard: bool

    def as_json(self, hits: int, max_hits: int | None = None) -> dict:
        out = {"entries": [{"key": k, "value": v} for k, v in self.entries], "hits_addend": hits}
        if max_hits is not None:
            out["max_hits"] = max_hits
        return out

    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.entries)

    def wanted(self, demand: Demand) -> tuple[int, int | None]:
        """(hits_addend, max_hits) of this descriptor's reservation."""
        if self.config.limit_type == "requests":
            return 1, None
        if self.hard:
            if demand.max_output is not None:
                return demand.input_bound + demand.max_output, None
            return demand.input_bound + 1, ELASTIC_MAX
        return demand.estimate, None

    def charge(self, usage: "Usage", activation: Activation) -> int:
        """What the request costs on this descriptor: its `cost` CEL, else tokens or one request."""
        if self.config.cost is not None:
            try:
                return int(self.config.cost.evaluate(activation))
            except (CelError, TypeError, ValueError) as e:
                log.warning("cost expression failed, charging usage: %s", e)
        return usage.total if self.config.limit_type == "tokens" else 1


def resolve(target: RemoteTarget, activation: Activation) -> list[Descriptor]:
    """Evaluates every descriptor's entries; one whose CEL fails is skipped."""
    out = []
    for config in target.descriptors or ():
        try:
            entries = tuple((e.entry_key, _text(e.entry_value.evaluate(activation))) for e in config.entries)
        except CelError as e:
            log.debug("descriptor skipped: %s", e)
            continue
        if entries and all(v is not None for _, v in entries):
            out.append(Descriptor(config, entries, target.enforcement_of(config) == "hard"))
    return out


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class Status:
    code: str
    limit: int | None
    remaining: int
    reset_after: float
    retry_after: float


def _seconds(value) -> float:
    if value is None:
        return 0.0
    return float(str(value).rstrip("s") or 0)


def parse_status(raw: dict) -> Status:
    limit = raw.get("currentLimit") or {}
    per_unit = limit.get("requestsPerUnit")
    return Status(
        code=raw.get("code", "OK"),
        limit=int(per_unit) if per_unit is not None else None,
        remaining=int(raw.get("limitRemaining", 0)),
        reset_after=_seconds(raw.get("durationUntilReset")),
        retry_after=_seconds(raw.get("retryAfter") or raw.get("durationUntilReset")),
    )


class RemoteClient(Protocol):
    """The rate-limit service, as this policy needs it (gateway/ratelimit_client.py)."""

    async def reserve(self, host: str, domain: str, descriptors: list[dict], timeout: float) -> tuple[int, dict]:
        """(HTTP status, reply body); raises RemoteUnavailable."""

    def settle(self, host: str, domain: str, descriptors: list[dict], timeout: float) -> None:
        """Queues an adjustment, delivered in the background."""


class RemoteHold:
    """What one request reserved on the service, and how to settle it."""

    __slots__ = ("client", "target", "descriptors", "reserved", "statuses", "activation", "max_tokens")

    def __init__(self, client: RemoteClient, target: RemoteTarget, descriptors: list[Descriptor],
                 reserved: list[int], statuses: list[Status], activation: Activation,
                 max_tokens: int | None) -> None:
        self.client, self.target, self.descriptors = client, target, descriptors
        self.reserved, self.statuses, self.activation = reserved, statuses, activation
        self.max_tokens = max_tokens

    def remaining_tokens(self) -> int | None:
        tokens = [s.remaining for d, s in zip(self.descriptors, self.statuses)
                  if d.config.limit_type == "tokens" and s.limit is not None]
        return min(tokens) if tokens else None

    def settle(self, usage: "Usage") -> None:
        self._adjust([d.charge(usage, self.activation) for d in self.descriptors])

    def release(self) -> None:
        self._adjust([0] * len(self.descriptors))

    def _adjust(self, charges: list[int]) -> None:
        deltas = [c - r for c, r in zip(charges, self.reserved)]
        if any(deltas):
            t = self.target
            self.client.settle(t.service, t.domain, [d.as_json(x) for d, x in zip(self.descriptors, deltas)],
                               t.timeout)


class RemoteLimiter:
    """Admits requests against the global budgets of a route's `remoteRateLimit`."""

    def __init__(self, client: RemoteClient, on_failure) -> None:
        self.client = client
        self.on_failure = on_failure  # (domain, failure mode): counted in the gateway's metrics

    async def admit(self, policy: RemoteRateLimit, demand: Demand) -> RemoteHold | None:
        activation = demand.activation
        target = policy.target(activation)
        descriptors = resolve(target, activation) if target is not None else []
        if not descriptors:
            return None
        wanted = [d.wanted(demand) for d in descriptors]
        try:
            status, body = await self.client.reserve(
                target.service, target.domain, [d.as_json(h, m) for d, (h, m) in zip(descriptors, wanted)],
                target.timeout)
        except RemoteUnavailable as e:
            self.on_failure(target.domain, target.failure_mode)
            if target.failure_mode == "failOpen":
                log.warning("serving without the global budget (failOpen): %s", e)
                return None
            log.warning("refusing (failClosed): %s", e)
            raise
        statuses = [parse_status(s) for s in body.get("statuses", [])]
        if status != 200:
            raise BudgetExceeded(_verdict(target.domain, descriptors, statuses))
        granted = body.get("granted")
        elastic = granted is not None and any(m is not None for _, m in wanted)
        reserved = [int(granted) if elastic and m is not None else h for h, m in wanted]
        max_tokens = max(1, int(granted) - demand.input_bound) if elastic else None
        return RemoteHold(self.client, target, descriptors, reserved, statuses, activation, max_tokens)


def _verdict(domain: str, descriptors: list[Descriptor], statuses: list[Status]) -> Verdict:
    """The refusal of the most constrained descriptor that tripped."""
    pairs = list(zip(descriptors, statuses))
    tripped = [(d, s) for d, s in pairs if s.code == "OVER_LIMIT"]
    d, s = min(tripped or pairs, key=lambda ds: ds[1].remaining)
    return Verdict(allowed=False, limit=s.limit or 0, remaining=max(0, s.remaining),
                   reset_after=s.reset_after, retry_after=s.retry_after,
                   tripped=f"remoteRateLimit domain {domain} descriptor {d.label()}")
