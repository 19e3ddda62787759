"""The per-replica token bucket: agentgateway's fill rules, plus debt."""

import asyncio

import pytest

from gateway.cel import Activation
from gateway.llm import Usage
from gateway.policies.budget import BudgetExceeded, Demand
from gateway.policies.local_ratelimit import LocalLimiter, LocalRateLimit, TokenBucket


def limit(max_tokens, per_fill, interval, type_="tokens") -> LocalRateLimit:
    return LocalRateLimit.model_validate(
        {"maxTokens": max_tokens, "tokensPerFill": per_fill, "fillInterval": interval, "type": type_})


def admit(limiter: LocalLimiter, limits, estimate: int):
    """One request on route "r" with these limits and this prompt estimate."""
    demand = Demand(route="r", activation=Activation(), model="m", price=None, lease=60.0, estimate=estimate,
                    input_bound=0, unbounded="", max_output=None)
    return asyncio.run(limiter.admit(limits, demand))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bucket(max_tokens=10, per_fill=1, interval=60.0, type_="tokens"):
    clock = Clock()
    return TokenBucket(limit(max_tokens, per_fill, interval, type_), clock), clock


def test_starts_full_and_fills_whole_intervals():
    b, clock = bucket()
    assert b.can_take(10) and not b.can_take(11)
    b.take(10)
    assert not b.can_take(0)
    clock.now += 59.9
    assert not b.can_take(0)
    clock.now += 0.1
    assert b.can_take(1) and not b.can_take(2)
    clock.now += 3600
    assert b.can_take(10) and not b.can_take(11)  # never above maxTokens


def test_debt_is_paid_back_by_fills_not_forgotten():
    b, clock = bucket()
    b.take(25)  # a response that crossed the budget
    v = b.verdict(False, 1)
    assert v.remaining == 0
    assert v.retry_after == 16 * 60  # from -15 to +1 takes 16 fills
    clock.now += 15 * 60
    assert not b.can_take(0)  # back to exactly zero: still refused
    clock.now += 60
    assert b.can_take(1)


def test_full_bucket_does_not_bank_time():
    b, clock = bucket()
    clock.now += 600  # idle while full
    b.take(1)
    clock.now += 30
    assert not b.can_take(10)  # the first fill comes 60 s after the take, not at once


def test_admission_is_all_or_nothing_and_settle_replaces_the_estimate():
    limiter = LocalLimiter()
    limits = (limit(100, 100, 60, "tokens"), limit(2, 2, 60, "requests"))
    tokens, requests = limiter.buckets("r", limits)
    hold = admit(limiter, limits, 40)
    hold.settle(Usage(30, 40))  # real usage 70 replaces the 40 reserved
    assert tokens.verdict(True).remaining == 30 and hold.remaining() == {"tokens": 30, "requests": 1}
    with pytest.raises(BudgetExceeded) as refused:  # does not fit the tokens bucket
        admit(limiter, limits, 31)
    assert "token rate limit" in refused.value.verdict.tripped
    assert requests.verdict(True).remaining == 1  # the requests bucket was not charged
    admit(limiter, limits, 0)
    with pytest.raises(BudgetExceeded) as refused:
        admit(limiter, limits, 0)
    assert "request rate limit" in refused.value.verdict.tripped


def test_buckets_survive_reload_unless_their_limit_changes():
    limiter = LocalLimiter()
    limits = (limit(10, 1, 60, "tokens"),)
    first = limiter.buckets("route0", limits)[0]
    first.take(10)
    assert limiter.buckets("route0", limits)[0] is first
    changed = limiter.buckets("route0", (limit(20, 1, 60, "tokens"),))[0]
    assert changed is not first and changed.can_take(20)


def test_release_hands_back_request_counts_and_tokens():
    limiter = LocalLimiter()
    limits = (limit(100, 100, 60, "tokens"), limit(1, 1, 60, "requests"))
    tokens, _ = limiter.buckets("r", limits)
    hold = admit(limiter, limits, 30)
    with pytest.raises(BudgetExceeded):
        admit(limiter, limits, 0)  # the one request is taken
    hold.release()
    assert tokens.verdict(True).remaining == 100
    admit(limiter, limits, 0)  # the request was handed back
