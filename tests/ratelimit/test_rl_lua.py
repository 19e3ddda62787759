"""The Lua scripts (lua/) against a real redis-server, through the limiter bridge.

Time never decides a result here: periods are long enough that the test's own
duration cannot move a number, and where time must pass, a second limiter with
a clock offset looks at the same Redis from later on.
"""

import asyncio
import uuid

import pytest
from tests.harness.procs import free_port, start_redis

from ratelimit_service.limiter import JSON, RESERVE, SETTLE, Call, Check, Limiter, LimiterError, MemoryBackend
from ratelimit_service.redis_client import PipelinedRedis

YEAR = 365 * 86400


@pytest.fixture
async def limiter(redis_url):
    lim = Limiter(PipelinedRedis(redis_url))
    yield lim
    await lim.close()


@pytest.fixture
async def later(redis_url):
    """The same Redis, seen a million seconds later."""
    lim = Limiter(PipelinedRedis(redis_url), clock_offset=1_000_000)
    yield lim
    await lim.close()


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


def rid() -> str:
    return uuid.uuid4().hex


def tb(k, capacity, period, hits, per_grant=0.0, shadow=False, index=0):
    return Check(k, "tb", capacity, period, hits, per_grant, shadow, index)


def numbered(checks: list[Check]) -> list[Check]:
    for i, c in enumerate(checks):
        c.index = i
    return checks


def reserve(checks, **fields) -> Call:
    return Call(RESERVE, numbered(checks), id=fields.pop("id", None) or rid(), descriptors=len(checks), **fields)


async def one(lim, mode, check, **fields):
    call = reserve([check], **fields) if mode == RESERVE else Call(mode, [check], actual=[check.hits], **fields)
    if mode == SETTLE and not call.id:
        call.id = rid()
    [outcome] = (await lim.decide(call)).outcomes
    return outcome


async def level(lim, k) -> float | None:
    raw = await lim.backend.call("GET", k)
    return None if raw is None else float(raw.split()[0])


async def test_bucket_starts_full_and_refills_continuously(limiter, later):
    k = key()
    # 100,000 tokens a million seconds: 0.1 a second, so the test's own seconds move nothing.
    first = await one(limiter, JSON, tb(k, 100_000, 1_000_000, 100_000))
    assert not first.over and first.remaining == 0
    assert first.reset_ms == 1_000_000_000
    half = await one(later, JSON, tb(k, 100_000, 2_000_000, 0))  # 0.05 a second over the million
    assert half.remaining == 50_000


async def test_charge_over_capacity_goes_into_debt_and_check_fails_until_repaid(limiter):
    k = key()
    settled = await one(limiter, SETTLE, tb(k, 100, 3600, 250))
    assert settled.remaining == -150 and settled.over  # settle reports the bucket as empty
    check = await one(limiter, JSON, tb(k, 100, 3600, 0))
    assert check.over and check.remaining == -150
    # 150 tokens of debt drain at 100/h: ~5400 s until anything is left.
    assert 5399_000 <= check.retry_ms <= 5401_000
    assert await level(limiter, k) == pytest.approx(250, abs=0.1)


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


async def test_keys_expire_when_the_level_would_have_drained(limiter):
    k = key()
    await one(limiter, JSON, tb(k, 10, 3600, 5))  # 5 of 10, draining 10 an hour: 30 min
    assert 1_799_000 <= await limiter.backend.call("PTTL", k) <= 1_800_000


async def test_fixed_window_counts_per_epoch_aligned_window(redis_url):
    # Half an hour into some hour: the calls share its window however slow the machine is.
    hour = 1_700_000_000 // 3600 * 3600 + 3600
    now = await Limiter(PipelinedRedis(redis_url)).backend.call("TIME")
    lim = Limiter(PipelinedRedis(redis_url), clock_offset=hour + 1800 - int(now[0]))
    k = key()
    outcomes = [await one(lim, JSON, Check(k, "fw", 2, 3600, 1)) for _ in range(3)]
    assert [o.over for o in outcomes] == [False, False, True]
    assert 1_790_000 < outcomes[2].reset_ms <= 1_800_000  # the window's end, not the bucket's
    assert await lim.backend.call("KEYS", f"{k}*") == [f"{k}:{hour}".encode()]
    assert 1_790_000 < await lim.backend.call("PTTL", f"{k}:{hour}") <= 1_800_000
    await lim.close()


async def test_reserve_is_all_or_nothing(limiter):
    a, b = key(), key()
    await one(limiter, JSON, tb(b, 10, 3600, 8))
    decision = await limiter.decide(reserve([tb(a, 100, 3600, 5), tb(b, 10, 3600, 5)]))
    assert decision.granted == 0
    assert [o.over for o in decision.outcomes] == [False, True]
    assert decision.outcomes[1].retry_ms > 0
    assert await limiter.backend.call("EXISTS", a) == 0  # nothing charged
    assert await level(limiter, b) == pytest.approx(8, abs=0.01)


async def test_shadow_descriptor_reports_over_but_does_not_block(limiter):
    a, s = key(), key()
    decision = await limiter.decide(reserve([tb(a, 10, YEAR, 3), tb(s, 1, YEAR, 3, shadow=True)]))
    assert [o.over for o in decision.outcomes] == [False, True]  # the service answers OK for it
    assert await level(limiter, a) == pytest.approx(3, abs=0.01)


async def test_descriptors_sharing_a_bucket_are_charged_in_turn(limiter):
    k = key()
    outcomes = (await limiter.decide(Call(JSON, [tb(k, 10, YEAR, 4)] * 3))).outcomes
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
        r = rid()
        await lim.decide(reserve([tb("m", 10, YEAR, 6)], id=r))
        settled = await lim.decide(Call(SETTLE, [tb("m", 10, YEAR, 2)], id=r, actual=[2]))
        assert settled.outcomes[0].remaining == 8  # 6 held, 2 used
    finally:
        await lim.close()


# Batches: many requests in one script call (mode 'batch').


async def test_decide_many_answers_as_decide_one_after_the_other(limiter):
    a, b = key(), key()
    first = rid()

    def requests(a, b, first):
        return [
            reserve([Check(a, "tb", 100, 3600, 60)], id=first),
            reserve([Check(a, "tb", 100, 3600, 60), Check(b, "tb", 10, 3600, 1)]),  # refused: a has 40
            Call(SETTLE, numbered([Check(a, "tb", 100, 3600, 40), Check(b, "fw", 5, 3600, 9)]), id=first,
                 actual=[40, 9]),
            reserve([Check(a, "tb", 100, 3600, 10, 1.0), Check(b, "tb", 10, 3600, 0, shadow=True)], max_grant=500),
        ]

    together = await limiter.decide_many(requests(a, b, first))
    alone = [await limiter.decide(call) for call in requests(key(), key(), rid())]
    for got, want in zip(together, alone, strict=True):
        assert (got.granted, got.state) == (want.granted, want.state)
        assert [(o.over, o.remaining) for o in got.outcomes] == [(o.over, o.remaining) for o in want.outcomes]
        # The buckets drain between the single calls: durations may differ by a few ms.
        assert all(abs(o.reset_ms - w.reset_ms) < 100 for o, w in zip(got.outcomes, want.outcomes))
    assert together[3].granted == 50  # what the settle left (60 held, 40 used), less the 10 fixed


async def test_large_numbers_come_back_exact(limiter):
    """Numbers past 1e14 would be rounded by Lua's %.14g; the batch prints them whole."""
    a, b = key(), key()
    huge, capacity = 123_456_789_012_345, 4_000_000_000  # deep in debt, but draining fast
    [batched] = await limiter.decide_many([Call(SETTLE, [Check(a, "tb", capacity, 1, huge)], id=rid(), actual=[huge])])
    single = await limiter.decide(Call(SETTLE, [Check(b, "tb", capacity, 1, huge)], id=rid(), actual=[huge]))
    assert batched.outcomes[0].remaining == single.outcomes[0].remaining == capacity - huge
    assert batched.outcomes[0].reset_ms == single.outcomes[0].reset_ms == -(-huge * 1000 // capacity)


async def test_memory_backend_decides_batches_too():
    lim = Limiter(MemoryBackend())
    a = key()
    r0, r1, r2 = rid(), rid(), rid()

    def bucket(hits):
        return [Check(a, "tb", 100, 3600, hits)]

    first = await lim.decide_many([
        reserve(bucket(60), id=r0), reserve(bucket(60), id=r1), Call(SETTLE, bucket(50), id=r0, actual=[50]),
    ])
    await lim.backend.call("SCRIPT", "FLUSH")
    second = await lim.decide_many([
        reserve(bucket(40), id=r2), Call(SETTLE, bucket(0), id=r2, actual=[0]),  # a release
        Call(SETTLE, bucket(50), id=r0, actual=[50]),  # a duplicate
    ])
    assert [[(o.over, o.remaining) for o in d.outcomes] for d in first + second] == [
        [(False, 40)], [(True, 40)], [(False, 50)], [(False, 10)], [(False, 50)], [(False, 50)],
    ]
    assert [d.state for d in first + second] == [0, 0, 1, 0, 1, 2]
    await lim.close()
