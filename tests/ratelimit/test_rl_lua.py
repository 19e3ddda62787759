"""The Lua scripts (lua/) against a real redis-server, through the limiter bridge."""

import asyncio
import time
import uuid

import pytest
from tests.harness.procs import free_port, start_redis

from ratelimit_service.limiter import JSON, RESERVE, SETTLE, Check, Limiter, LimiterError, MemoryBackend
from ratelimit_service.redis_client import PipelinedRedis

YEAR = 365 * 86400


@pytest.fixture
async def limiter(redis_url):
    lim = Limiter(PipelinedRedis(redis_url))
    yield lim
    await lim.close()


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


def tb(k, capacity, period, hits, max_hits=-1, shadow=False):
    return Check(k, "tb", capacity, period, hits, max_hits, shadow)


async def one(lim, mode, check):
    _, [outcome] = await lim.decide(mode, [check])
    return outcome


async def level(lim, k) -> float | None:
    raw = await lim.backend.call("GET", k)
    return None if raw is None else float(raw.split()[0])


async def test_bucket_starts_full_and_refills_continuously(limiter):
    k = key()
    before = time.monotonic()
    first = await one(limiter, JSON, tb(k, 100, 10, 100))  # 10 tokens/s
    charged = time.monotonic()
    assert not first.over and first.remaining == 0
    assert 9900 <= first.reset_ms <= 10000
    await asyncio.sleep(0.5)
    checking = time.monotonic()
    check = await one(limiter, JSON, tb(k, 100, 10, 0))
    after = time.monotonic()
    assert not check.over
    # Refilled 10 per second between the two calls, give or take their own duration.
    assert int(10 * (checking - charged)) <= check.remaining <= int(10 * (after - before)) + 1


async def test_charge_over_capacity_goes_into_debt_and_check_fails_until_repaid(limiter):
    k = key()
    settled = await one(limiter, SETTLE, tb(k, 100, 3600, 250))
    assert settled.remaining == -150 and settled.over  # settle reports the bucket as empty
    check = await one(limiter, JSON, tb(k, 100, 3600, 0))
    assert check.over and check.remaining == -150
    # 150 tokens of debt drain at 100/h: ~5400 s until anything is left.
    assert 5399_000 <= check.retry_ms <= 5401_000
    assert await level(limiter, k) == pytest.approx(250, abs=0.1)


async def test_refunds_are_capped_at_capacity(limiter):
    k = key()
    await one(limiter, RESERVE, tb(k, 100, 3600, 30))
    refund = await one(limiter, SETTLE, tb(k, 100, 3600, -1000))
    assert refund.remaining == 100 and not refund.over
    assert await limiter.backend.call("EXISTS", k) == 0  # a full bucket needs no key
    after = await one(limiter, RESERVE, tb(k, 100, 3600, 101))
    assert after.over  # never above capacity


async def test_json_charges_when_over_but_debt_stops_at_twice_capacity(limiter):
    k = key()
    outcomes = [await one(limiter, JSON, tb(k, 5, 3600, 1)) for _ in range(20)]
    assert [o.over for o in outcomes] == [False] * 5 + [True] * 15
    assert [o.remaining for o in outcomes[:5]] == [4, 3, 2, 1, 0]
    assert await level(limiter, k) == pytest.approx(10, abs=0.01)


async def test_limit_zero_is_always_over_and_writes_nothing(limiter):
    k = key()
    for hits in (0, 1, 5):
        outcome = await one(limiter, JSON, tb(k, 0, 60, hits))
        assert outcome.over and outcome.remaining == 0
    assert await limiter.backend.call("EXISTS", k) == 0


async def test_key_holds_no_limit_so_raising_it_keeps_the_spend(limiter):
    k = key()
    await one(limiter, JSON, tb(k, 10, YEAR, 8))
    raised = await one(limiter, JSON, tb(k, 20, YEAR, 0))
    assert raised.remaining == 12


async def test_keys_expire_when_the_level_drains_to_zero(limiter):
    k = key()
    await one(limiter, JSON, tb(k, 10, 1, 5))  # 5 of 10, draining 10/s
    ttl = await limiter.backend.call("PTTL", k)
    assert 400 <= ttl <= 500
    await asyncio.sleep(0.6)
    assert await limiter.backend.call("EXISTS", k) == 0


async def test_fixed_window_counts_per_epoch_aligned_window(limiter):
    k = key()
    # Start just after a second boundary so the three calls share one window.
    await asyncio.sleep(1 - time.time() % 1 + 0.05)
    outcomes = [await one(limiter, JSON, Check(k, "fw", 2, 1, 1)) for _ in range(3)]
    assert [o.over for o in outcomes] == [False, False, True]
    assert 0 < outcomes[2].reset_ms <= 1000
    window_keys = await limiter.backend.call("KEYS", f"{k}:*")
    assert len(window_keys) == 1
    assert window_keys[0] == f"{k}:{int(time.time())}".encode()
    ttl = await limiter.backend.call("PTTL", window_keys[0])
    assert 0 < ttl <= 1000
    await asyncio.sleep(outcomes[2].reset_ms / 1000 + 0.05)
    assert not (await one(limiter, JSON, Check(k, "fw", 2, 1, 1))).over


async def test_reserve_is_all_or_nothing(limiter):
    a, b = key(), key()
    await one(limiter, JSON, tb(b, 10, 3600, 8))
    granted, outcomes = await limiter.decide(RESERVE, [tb(a, 100, 3600, 5), tb(b, 10, 3600, 5)])
    assert granted == -1
    assert [o.over for o in outcomes] == [False, True]
    assert outcomes[1].retry_ms > 0
    assert await limiter.backend.call("EXISTS", a) == 0  # nothing charged
    assert await level(limiter, b) == pytest.approx(8, abs=0.01)


async def test_elastic_descriptors_share_one_grant(limiter):
    a, b, c = key(), key(), key()
    await one(limiter, JSON, tb(b, 100, YEAR, 70))  # b has 30 left
    granted, outcomes = await limiter.decide(
        RESERVE, [tb(a, 1000, YEAR, 10, max_hits=50), tb(b, 100, YEAR, 10, max_hits=50), tb(c, 100, YEAR, 1)]
    )
    assert granted == 30
    assert [o.remaining for o in outcomes] == [970, 0, 99]
    # Too little left for the minimum: refused, nothing charged anywhere.
    granted, outcomes = await limiter.decide(RESERVE, [tb(a, 1000, YEAR, 10, 50), tb(b, 100, YEAR, 10, 50)])
    assert granted == 0 and [o.over for o in outcomes] == [False, True]
    assert await level(limiter, a) == pytest.approx(30, abs=0.01)


async def test_shadow_descriptor_reports_over_but_does_not_block(limiter):
    a, s = key(), key()
    granted, outcomes = await limiter.decide(RESERVE, [tb(a, 10, YEAR, 3), tb(s, 1, YEAR, 3, shadow=True)])
    assert [o.over for o in outcomes] == [False, True]
    assert await level(limiter, a) == pytest.approx(3, abs=0.01)


async def test_descriptors_sharing_a_bucket_are_charged_in_turn(limiter):
    k = key()
    _, outcomes = await limiter.decide(JSON, [tb(k, 10, YEAR, 4)] * 3)
    assert [(o.over, o.remaining) for o in outcomes] == [(False, 6), (False, 2), (True, -2)]


@pytest.mark.parametrize("mode", [JSON, RESERVE])
async def test_no_lost_updates_with_8_concurrent_clients(redis_url, mode):
    k = key()
    clients = [Limiter(PipelinedRedis(redis_url)) for _ in range(8)]
    capacity = 5000 if mode == RESERVE else 100_000

    async def run(lim):
        passed = 0
        for _ in range(1000):
            passed += not (await one(lim, mode, tb(k, capacity, YEAR, 1))).over
        return passed

    try:
        passed = await asyncio.gather(*(run(c) for c in clients))
        if mode == RESERVE:
            assert sum(passed) == 5000  # exactly the capacity, never more
        else:
            assert sum(passed) == 8000
            assert (await one(clients[0], JSON, tb(k, capacity, YEAR, 0))).remaining == capacity - 8000
    finally:
        for c in clients:
            await c.close()


async def test_noscript_after_script_flush_is_reloaded(limiter):
    k = key()
    await one(limiter, JSON, tb(k, 10, YEAR, 1))
    await limiter.backend.call("SCRIPT", "FLUSH")
    assert (await one(limiter, JSON, tb(k, 10, YEAR, 1))).remaining == 8
    assert await limiter.backend.call("SCRIPT", "EXISTS", limiter.sha) == [1]


async def test_redis_restart_reconnects_and_reloads_the_script():
    port = free_port()
    proc, url = start_redis(port)
    lim = Limiter(PipelinedRedis(url, timeout=1.0))
    try:
        assert (await one(lim, JSON, tb(key(), 10, YEAR, 1))).remaining == 9
        proc.stop()
        with pytest.raises(LimiterError):
            await one(lim, JSON, tb(key(), 10, YEAR, 1))
        proc, _ = start_redis(port)
        assert (await one(lim, JSON, tb(key(), 10, YEAR, 1))).remaining == 9
    finally:
        await lim.close()
        proc.stop()


async def test_memory_backend_runs_the_same_script():
    lim = Limiter(MemoryBackend())
    try:
        outcomes = [await one(lim, JSON, tb("k", 3, YEAR, 1)) for _ in range(4)]
        assert [o.over for o in outcomes] == [False, False, False, True]
        await lim.backend.call("SCRIPT", "FLUSH")
        assert (await one(lim, SETTLE, tb("k", 3, YEAR, -2))).remaining == 1  # 4 charged, 2 refunded
    finally:
        await lim.close()


# Batches: many requests in one script call (mode 'batch').


async def test_decide_many_answers_as_decide_one_after_the_other(limiter):
    a, b = key(), key()
    requests = [
        (RESERVE, [Check(a, "tb", 100, 3600, 60)]),
        (RESERVE, [Check(a, "tb", 100, 3600, 60), Check(b, "tb", 10, 3600, 1)]),  # refused: a has 40
        (SETTLE, [Check(a, "tb", 100, 3600, -20), Check(b, "fw", 5, 3600, 9)]),
        (RESERVE, [Check(a, "tb", 100, 3600, 10, max_hits=500), Check(b, "tb", 10, 3600, 0, shadow=True)]),
    ]
    together = await limiter.decide_many(requests)
    c, d = key(), key()
    renamed = {a: c, b: d}
    alone = []
    for mode, checks in requests:
        alone.append(await limiter.decide(mode, [
            Check(renamed[k.key], k.algorithm, k.capacity, k.period, k.hits, k.max_hits, k.shadow) for k in checks
        ]))
    for (granted, outcomes), (want_granted, want_outcomes) in zip(together, alone, strict=True):
        assert granted == want_granted
        assert [(o.over, o.remaining) for o in outcomes] == [(o.over, o.remaining) for o in want_outcomes]
        # The buckets drain between the single calls: durations may differ by a few ms.
        assert all(abs(o.reset_ms - w.reset_ms) < 100 for o, w in zip(outcomes, want_outcomes))
    assert together[3][0] == 60  # the elastic grant: what the settle left


async def test_large_numbers_come_back_exact(limiter):
    """Numbers past 1e14 would be rounded by Lua's %.14g; the batch prints them whole."""
    a, b = key(), key()
    huge, capacity = 123_456_789_012_345, 4_000_000_000  # deep in debt, but draining fast
    [(_, [batched])] = await limiter.decide_many([(SETTLE, [Check(a, "tb", capacity, 1, huge)])])
    _, [single] = await limiter.decide(SETTLE, [Check(b, "tb", capacity, 1, huge)])
    assert batched.remaining == single.remaining == capacity - huge
    assert batched.reset_ms == single.reset_ms == -(-huge * 1000 // capacity)


async def test_memory_backend_decides_batches_too():
    lim = Limiter(MemoryBackend())
    a = key()
    requests = [
        (RESERVE, [Check(a, "tb", 100, 3600, 60)]),
        (RESERVE, [Check(a, "tb", 100, 3600, 60)]),
        (SETTLE, [Check(a, "tb", 100, 3600, -10)]),
    ]
    first = await lim.decide_many(requests)
    await lim.backend.call("SCRIPT", "FLUSH")
    second = await lim.decide_many(requests)
    assert [[(o.over, o.remaining) for o in outcomes] for _, outcomes in first + second] == [
        [(False, 40)], [(True, 40)], [(False, 50)], [(True, 50)], [(True, 50)], [(False, 60)],
    ]
    await lim.close()
