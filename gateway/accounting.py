"""The reserve → settle lifecycle of one request's budgets.

Admission reserves what is known before the call: the prompt estimate with
`tokenize: true`, else nothing (a check that the budget is above zero). Hard budgets
reserve the prompt's upper bound plus the output cap. Once the provider reports
usage, settling replaces each reservation with the real figure. A refused request is
never charged: every reservation already made for it is handed back.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

from gateway.cel import CelError
from gateway.config.runtime import Route
from gateway.metrics import Metrics
from gateway.policies.local_ratelimit import LocalLimiter, TokenBucket, Verdict
from gateway.policies.ratelimit_client import RemoteClient, RemoteUnavailable
from gateway.policies.remote_ratelimit import Descriptor, Status, resolve, select_rule

log = logging.getLogger("tollgate.accounting")

# What an elastic (hard, no max_tokens) reservation may take at most: the whole budget.
ELASTIC_MAX = 2**53


class BudgetExceeded(Exception):
    """A 429: which budget tripped and the headers the client gets."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"rate limit exceeded: {verdict.tripped}")
        self.verdict = verdict


def limit_headers(v: Verdict) -> dict[str, str]:
    headers = {
        "x-ratelimit-limit": str(v.limit),
        "x-ratelimit-remaining": str(v.remaining),
        "x-ratelimit-reset": str(math.ceil(v.reset_after)),
    }
    if not v.allowed:
        headers["retry-after"] = str(max(1, math.ceil(v.retry_after)))
    return headers


@dataclass(frozen=True)
class Demand:
    """What a request is known to need before it is sent."""

    estimate: int  # prompt estimate (0 without tokenize)
    input_bound: int  # prompt upper bound, for hard budgets
    max_output: int | None  # the client's max_tokens, if any
    activation: Callable[[dict | None], object] | None = None  # CEL activation builder


@dataclass
class RemoteHold:
    policy: object
    descriptors: list[Descriptor]
    reserved: list[int]
    statuses: list[Status]


@dataclass
class Admission:
    """What one admitted request holds until it settles."""

    local: list[tuple[TokenBucket, int]] = field(default_factory=list)  # every bucket, with its reservation
    remote: RemoteHold | None = None
    max_tokens: int | None = None  # set by hard budgets when the client gave none
    activation: Callable[[dict | None], object] | None = None
    settled: bool = False

    def headers(self) -> dict[str, str]:
        remaining = []
        tightest = LocalLimiter.tightest([bucket for bucket, _ in self.local])
        if tightest:
            remaining.append(tightest.remaining)
        if self.remote:
            remaining += [s.remaining for d, s in zip(self.remote.descriptors, self.remote.statuses)
                          if d.spec.type == "tokens" and s.limit is not None]
        return {"x-ratelimit-remaining-tokens": str(min(remaining))} if remaining else {}


def _hits(d: Descriptor, demand: Demand) -> tuple[int, int | None]:
    """(hits_addend, max_hits) of one descriptor's reservation."""
    if d.spec.type == "requests":
        return 1, None
    if d.spec.enforcement == "hard":
        if demand.max_output is not None:
            return demand.input_bound + demand.max_output, None
        return demand.input_bound + 1, ELASTIC_MAX
    return demand.estimate, None


def _verdict(d: Descriptor, s: Status, domain: str) -> Verdict:
    return Verdict(allowed=False, limit=s.limit or 0, remaining=max(0, s.remaining),
                   reset_after=s.reset_after, retry_after=s.retry_after,
                   tripped=f"remoteRateLimit domain {domain} descriptor {d.label()}")


class Accounting:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.local = LocalLimiter()
        self.remote = RemoteClient()

    async def admit(self, route: Route, demand: Demand) -> Admission:
        buckets = self.local.buckets(route.name, route.policies.local_rate_limits)
        refusal, charges = self.local.reserve(buckets, demand.estimate)
        if refusal is not None:
            raise BudgetExceeded(refusal)
        admission = Admission(local=charges, activation=demand.activation)
        if route.policies.remote_rate_limit:
            try:
                await self._admit_remote(route, demand, admission)
            except BaseException:
                self.local.refund(charges)
                raise
        return admission

    async def _admit_remote(self, route: Route, demand: Demand, admission: Admission) -> None:
        activation = demand.activation(None)
        policy = select_rule(route.policies.remote_rate_limit, activation)
        descriptors = resolve(policy, activation) if policy else []
        if not descriptors:
            return
        wanted = [_hits(d, demand) for d in descriptors]
        try:
            ok, statuses, granted = await self.remote.reserve(
                policy, [d.as_json(h, m) for d, (h, m) in zip(descriptors, wanted)])
        except RemoteUnavailable as e:
            self.metrics.remote_failure(policy.domain, policy.failure_mode)
            if policy.failure_mode == "failOpen":
                log.warning("serving without the global budget (failOpen): %s", e)
                return
            log.warning("refusing (failClosed): %s", e)
            raise
        if not ok:
            tripped = [(d, s) for d, s in zip(descriptors, statuses) if s.code == "OVER_LIMIT"]
            d, s = min(tripped or zip(descriptors, statuses), key=lambda ds: ds[1].remaining)
            raise BudgetExceeded(_verdict(d, s, policy.domain))
        reserved = [granted if m is not None and granted is not None else h for h, m in wanted]
        if granted is not None and any(m is not None for _, m in wanted):
            admission.max_tokens = max(1, granted - demand.input_bound)
        admission.remote = RemoteHold(policy, descriptors, reserved, statuses)

    def _cost(self, admission: Admission, d: Descriptor, usage) -> int:
        if d.spec.cost is not None and admission.activation is not None:
            llm = {"inputTokens": usage.input_tokens, "outputTokens": usage.output_tokens,
                   "totalTokens": usage.total_tokens}
            try:
                return int(d.spec.cost.evaluate(admission.activation(llm)))
            except (CelError, TypeError, ValueError) as e:
                log.warning("cost expression failed, charging usage: %s", e)
        return usage.total_tokens if d.spec.type == "tokens" else 1

    def settle(self, admission: Admission, usage) -> None:
        """Charges actual usage once; later calls for the same request do nothing.

        `usage` is None for a request that never reached a provider: every
        reservation is handed back in full.
        """
        if admission.settled:
            return
        admission.settled = True
        if usage is None:
            self.local.refund(admission.local)
        else:
            self.local.settle(admission.local, usage.total_tokens)
        hold = admission.remote
        if hold is None:
            return
        deltas = [(self._cost(admission, d, usage) if usage else 0) - r
                  for d, r in zip(hold.descriptors, hold.reserved)]
        if any(deltas):
            self.remote.settle(hold.policy, [d.as_json(delta) for d, delta in zip(hold.descriptors, deltas)])

    async def close(self) -> None:
        """Flushes pending remote settles before the process exits."""
        await self.remote.close()
