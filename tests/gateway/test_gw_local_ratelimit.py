"""The per-replica token bucket: agentgateway's fill rules, plus debt."""

from gateway.config.runtime import LocalLimit
from gateway.policies.local_ratelimit import LocalLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bucket(max_tokens=10, per_fill=1, interval=60.0, type_="tokens"):
    clock = Clock()
    return TokenBucket(LocalLimit(max_tokens, per_fill, interval, type_), clock), clock


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


def test_reserve_is_all_or_nothing_and_settle_replaces_estimate():
    limiter = LocalLimiter()
    limits = (LocalLimit(100, 100, 60, "tokens"), LocalLimit(2, 2, 60, "requests"))
    buckets = limiter.buckets("r", limits)
    refusal, charges = limiter.reserve(buckets, 40)
    assert refusal is None
    limiter.settle(charges, 70)  # real usage 70 replaces the 40 reserved
    assert buckets[0].verdict(True).remaining == 30
    refusal, _ = limiter.reserve(buckets, 31)  # does not fit the tokens bucket
    assert refusal is not None and "tokens" in refusal.tripped
    assert buckets[1].verdict(True).remaining == 1  # the requests bucket was not charged
    assert limiter.reserve(buckets, 0)[0] is None
    refusal, _ = limiter.reserve(buckets, 0)
    assert refusal is not None and "requests" in refusal.tripped


def test_buckets_survive_reload_unless_their_limit_changes():
    limiter = LocalLimiter()
    limits = (LocalLimit(10, 1, 60, "tokens"),)
    first = limiter.buckets("route0", limits)[0]
    first.take(10)
    assert limiter.buckets("route0", limits)[0] is first
    changed = limiter.buckets("route0", (LocalLimit(20, 1, 60, "tokens"),))[0]
    assert changed is not first and changed.can_take(20)


def test_refund_hands_back_request_counts_and_tokens():
    limiter = LocalLimiter()
    buckets = limiter.buckets("r", (LocalLimit(100, 100, 60, "tokens"), LocalLimit(1, 1, 60, "requests")))
    refusal, charges = limiter.reserve(buckets, 30)
    assert refusal is None and limiter.reserve(buckets, 0)[0] is not None  # the one request is taken
    limiter.refund(charges)
    assert buckets[0].verdict(True).remaining == 100
    assert limiter.reserve(buckets, 0)[0] is None  # the request was handed back
