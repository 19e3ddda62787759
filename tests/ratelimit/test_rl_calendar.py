"""Calendar windows: boundaries in a timezone, picked by Redis time, crossed without waiting.

TOLLGATE_CLOCK_OFFSET (or the offset a Limiter and Windows are given) puts the
clock minutes before or after a chosen boundary; nothing here waits for one.
"""

import time
import uuid
from datetime import datetime, timezone

import httpx
import pytest
import redis
from tests.harness.ratelimit import descriptor, domain_dir, launch_service, reservation_id

from ratelimit_service.limiter import BUDGET, JSON, Call, Check, Limiter, bucket_key, encoded_parts
from ratelimit_service.redis_client import PipelinedRedis
from ratelimit_service.windows import Windows, boundaries, zone

CONFIG = """
domain: cal
descriptors:
  - key: ny
    rate_limit: {unit: day, requests_per_unit: 100, timezone: America/New_York}
  - key: in
    rate_limit: {unit: day, requests_per_unit: 100, timezone: Asia/Kolkata}
"""


def at(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())


def utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("unit, tz, now, expected", [
    # New York springs forward on 2026-03-08 (a 23-hour day) and falls back on 2026-11-01 (25 hours).
    ("DAY", "America/New_York", "2026-03-08T12:00:00-04:00",
     ["2026-03-07T05:00:00Z", "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z", "2026-03-10T04:00:00Z"]),
    ("DAY", "America/New_York", "2026-11-01T12:00:00-05:00",
     ["2026-10-31T04:00:00Z", "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z", "2026-11-03T05:00:00Z"]),
    ("DAY", "Asia/Kolkata", "2026-12-02T23:59:59+05:30",  # +05:30: midnight is 18:30 UTC
     ["2026-11-30T18:30:00Z", "2026-12-01T18:30:00Z", "2026-12-02T18:30:00Z", "2026-12-03T18:30:00Z"]),
    # Santiago springs forward at midnight: that day starts at 01:00.
    ("DAY", "America/Santiago", "2026-09-06T12:00:00-03:00",
     ["2026-09-05T04:00:00Z", "2026-09-06T04:00:00Z", "2026-09-07T03:00:00Z", "2026-09-08T03:00:00Z"]),
    ("WEEK", "UTC", "2026-12-02T10:00:00+00:00",  # a Wednesday: the week began on Monday the 30th
     ["2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z", "2026-12-14T00:00:00Z"]),
    ("WEEK", "Europe/Paris", "2026-12-06T23:30:00+01:00",  # Sunday night is still the same week
     ["2026-11-22T23:00:00Z", "2026-11-29T23:00:00Z", "2026-12-06T23:00:00Z", "2026-12-13T23:00:00Z"]),
    ("MONTH", "UTC", "2028-02-15T00:00:00+00:00",  # a leap February
     ["2028-01-01T00:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z", "2028-04-01T00:00:00Z"]),
    ("MONTH", "Europe/Paris", "2026-12-31T23:30:00+01:00",
     ["2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z", "2026-12-31T23:00:00Z", "2027-01-31T23:00:00Z"]),
    ("YEAR", "Pacific/Kiritimati", "2026-12-31T10:00:00+14:00",  # +14:00: the year ends at 10:00 UTC
     ["2024-12-31T10:00:00Z", "2025-12-31T10:00:00Z", "2026-12-31T10:00:00Z", "2027-12-31T10:00:00Z"]),
])
def test_boundaries(unit, tz, now, expected):
    assert [utc(b) for b in boundaries(unit, zone(tz), at(now))] == expected


def test_windows_keep_boundaries_until_the_window_ends():
    clock = [at("2026-12-02T23:59:59+00:00")]
    windows = Windows(clock=lambda: clock[0])
    first = windows.bounds("DAY", "UTC")
    assert first == windows.bounds("DAY", "UTC")
    clock[0] += 1  # midnight
    assert windows.bounds("DAY", "UTC") != first
    assert windows.bounds("DAY", "UTC").split(b"\r\n")[1].split()[1] == str(at("2026-12-03T00:00:00+00:00")).encode()


async def decide_at(redis_url: str, iso: str, unit: str, tz: str, base: str, hits: int, service_skew: float = 0.0):
    """One decision on a calendar bucket with the clock at `iso` (the service's clock `service_skew` ahead)."""
    offset = at(iso) - time.time()
    lim = Limiter(PipelinedRedis(redis_url), clock_offset=offset)
    parts = encoded_parts(base, "cal", 100, Windows(offset + service_skew).bounds(unit, tz))
    try:
        return await lim.decide(Call(JSON if hits else BUDGET, [Check(base, "cal", 100, "", hits, parts=parts)]))
    finally:
        await lim.close()


def window_keys(redis_url: str, base: str) -> list[str]:
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return sorted(store.keys(base + ":*"))
    finally:
        store.close()


@pytest.mark.parametrize("unit, tz, before, after, boundary", [
    ("MONTH", "UTC", "2027-01-31T23:58:00+00:00", "2027-02-01T00:02:00+00:00", "2027-02-01T00:00:00+00:00"),
    ("WEEK", "UTC", "2026-12-06T23:58:00+00:00", "2026-12-07T00:02:00+00:00", "2026-12-07T00:00:00+00:00"),
    ("MONTH", "Asia/Kolkata", "2026-12-31T23:58:00+05:30", "2027-01-01T00:02:00+05:30", "2027-01-01T00:00:00+05:30"),
])
async def test_a_window_starts_again_at_its_boundary(redis_url, unit, tz, before, after, boundary):
    base = f"test:{uuid.uuid4().hex}"
    spent = await decide_at(redis_url, before, unit, tz, base, 70)
    assert spent.outcomes[0].remaining == 30
    assert spent.now_ms + spent.outcomes[0].reset_ms == 1000 * at(boundary)  # durationUntilReset: to the boundary
    fresh = await decide_at(redis_url, after, unit, tz, base, 0)
    assert fresh.outcomes[0].remaining == 100
    assert (await decide_at(redis_url, before, unit, tz, base, 0)).outcomes[0].remaining == 30
    assert window_keys(redis_url, base) == [f"{base}:{boundaries(unit, zone(tz), at(before))[1]}"]
    assert fresh.now_ms + fresh.outcomes[0].reset_ms == 1000 * boundaries(unit, zone(tz), at(boundary))[2]


async def test_a_23_hour_day(redis_url):
    base = f"test:{uuid.uuid4().hex}"
    decision = await decide_at(redis_url, "2026-03-08T00:00:30-05:00", "DAY", "America/New_York", base, 1)
    assert decision.now_ms + decision.outcomes[0].reset_ms == 1000 * at("2026-03-09T00:00:00-04:00")
    assert 23 * 3600_000 - 90_000 < decision.outcomes[0].reset_ms <= 23 * 3600_000 - 30_000


async def test_redis_time_picks_the_window_whatever_the_service_clock_says(redis_url):
    """The service's host runs 5 s ahead, past midnight; Redis is still 2 s before it: yesterday's window."""
    base = f"test:{uuid.uuid4().hex}"
    await decide_at(redis_url, "2026-12-02T23:59:58+00:00", "DAY", "UTC", base, 10, service_skew=5)
    assert window_keys(redis_url, base) == [f"{base}:{at('2026-12-02T00:00:00+00:00')}"]
    await decide_at(redis_url, "2026-12-03T00:00:02+00:00", "DAY", "UTC", base, 10, service_skew=-5)
    assert window_keys(redis_url, base)[1] == f"{base}:{at('2026-12-03T00:00:00+00:00')}"


# Real processes on both sides of local midnight, sharing one Redis.

ZONES = {
    "ny": ("2026-12-02T23:55:00-05:00", "2026-12-03T00:05:00-05:00", "2026-12-03T05:00:00Z", "2026-12-04T05:00:00Z"),
    "in": ("2026-12-02T23:55:00+05:30", "2026-12-03T00:05:00+05:30", "2026-12-02T18:30:00Z", "2026-12-03T18:30:00Z"),
}


@pytest.fixture(scope="module", params=sorted(ZONES))
def around_midnight(request, redis_url, tmp_path_factory):
    """(key, service 5 min before local midnight, service 5 min after, their next boundaries)."""
    config_dir = domain_dir(tmp_path_factory, "rl-calendar", {"cal.yaml": CONFIG})
    before_at, after_at, *resets = ZONES[request.param]
    procs = []
    bases = []
    for instant in (before_at, after_at):
        proc, base = launch_service(config_dir, redis_url, env={"TOLLGATE_CLOCK_OFFSET": str(at(instant) - time.time())})
        procs.append(proc)
        bases.append(base)
    yield request.param, *bases, resets
    for proc in procs:
        proc.stop()


def post(base: str, op: str, **body) -> httpx.Response:
    return httpx.post(f"{base}/{op}", json={"domain": "cal", **body}, timeout=5)


def view(base: str, d: dict) -> dict:
    return post(base, "v1/budget", descriptors=[{"entries": d["entries"]}]).json()["statuses"][0]


def test_a_day_starts_again_at_local_midnight(around_midnight):
    key, before, after, (midnight, next_midnight) = around_midnight
    d = descriptor((key, uuid.uuid4().hex), hits_addend=80)
    assert post(before, "json", descriptors=[d]).json()["statuses"][0]["limitRemaining"] == 20
    seen = view(before, d)
    assert (seen["spent"], seen["resetsAt"], seen["algorithm"]) == (80, midnight, "calendar")
    assert 0 < int(seen["durationUntilReset"].rstrip("s")) <= 300  # the boundary, not a refill
    assert post(before, "json", descriptors=[{**d, "hits_addend": 21}]).status_code == 429
    tomorrow = view(after, d)
    assert (tomorrow["spent"], tomorrow["limitRemaining"], tomorrow["resetsAt"]) == (0, 100, next_midnight)
    assert post(after, "json", descriptors=[{**d, "hits_addend": 100}]).status_code == 200


def test_a_settle_after_midnight_lands_in_the_day_it_was_reserved_in(around_midnight, redis_url):
    key, before, after, _ = around_midnight
    d, rid = descriptor((key, uuid.uuid4().hex)), reservation_id()
    assert post(before, "v1/reserve", id=rid, descriptors=[{**d, "hits_addend": 90}]).status_code == 200
    assert post(after, "v1/settle", id=rid, descriptors=[{**d, "hits_addend": 40}]).status_code == 200
    assert view(before, d)["spent"] == 40  # yesterday's window: the 90 held became the 40 used
    assert view(after, d)["spent"] == 0  # today's: untouched
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    [yesterday] = store.keys(bucket_key("cal", "cal", ((key, d["entries"][0]["value"]),)) + ":*")
    assert store.get(yesterday) == "40"
    store.close()
