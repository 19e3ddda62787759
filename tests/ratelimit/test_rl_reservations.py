"""Reservations: ids, leases that end by themselves, exactly-once settles, releases and extends.

Two service processes share one Redis: `now`, and `later`, whose clock
(TOLLGATE_CLOCK_OFFSET) runs an hour ahead, past every lease taken here but
the extended one. Buckets are token buckets over a year, so the seconds the
tests take move no number. Redis itself is read to show where things live.
"""

import uuid

import httpx
import pytest
import redis
from tests.harness.ratelimit import descriptor, domain_dir, launched, metric, reservation_id, serving, wait_until

from ratelimit_service.limiter import bucket_key

CONFIG = """
domain: plane
descriptors:
  - key: user_id
    rate_limit: {unit: year, requests_per_unit: 1000, algorithm: token_bucket}
  - key: team
    rate_limit: {unit: year, requests_per_unit: 300, algorithm: token_bucket}
  - key: plan
    value: unlimited
    rate_limit: {unlimited: true}
"""
HOUR_MS = 3_600_000
LEASE_MS = 60_000
TOMBSTONE_MS = 3_600_000  # lua/reservations.lua
MAX_LEASE_MS = 86_400_000  # lua/buckets.lua: the :r and :l keys outlive every lease


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    return domain_dir(tmp_path_factory, "rl-reservations", {"plane.yaml": CONFIG})


@pytest.fixture(scope="module")
def now(config_dir, redis_url):
    yield from launched(config_dir, redis_url)


@pytest.fixture(scope="module")
def later(config_dir, redis_url):
    yield from launched(config_dir, redis_url, env={"TOLLGATE_CLOCK_OFFSET": "3600"})


@pytest.fixture(scope="module")
def store(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def user() -> dict:
    return descriptor(("user_id", uuid.uuid4().hex))


def key_of(d: dict) -> str:
    entry = d["entries"][0]
    return bucket_key("plane", "tb", ((entry["key"], entry["value"]),))


def post(base: str, op: str, body: dict) -> httpx.Response:
    return httpx.post(f"{base}/v1/{op}", json=body, timeout=5)


def reserve(base: str, rid: str, *descriptors: dict, **extra) -> httpx.Response:
    return post(base, "reserve", {"domain": "plane", "id": rid, "descriptors": list(descriptors), **extra})


def settle(base: str, rid: str, *descriptors: dict) -> httpx.Response:
    return post(base, "settle", {"domain": "plane", "id": rid, "descriptors": list(descriptors)})


def spent(base: str, d: dict) -> int:
    r = post(base, "budget", {"domain": "plane", "descriptors": [{"entries": d["entries"]}]})
    return r.json()["statuses"][0]["spent"]


def test_a_settle_sent_twice_changes_nothing_the_second_time(now):
    u, rid = user(), reservation_id()
    assert reserve(now, rid, {**u, "hits_addend": 100}).status_code == 200
    first = settle(now, rid, {**u, "hits_addend": 30})
    assert first.status_code == 200 and "duplicate" not in first.json()
    again = settle(now, rid, {**u, "hits_addend": 30})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["statuses"] == first.json()["statuses"]
    other = settle(now, rid, {**u, "hits_addend": 500})  # a settle that disagrees is still the same id
    assert other.json()["duplicate"] is True
    assert spent(now, u) == 30


def test_a_check_only_reservation_opens_no_record_and_still_settles_once(now, store):
    """A soft budget's reserve holds nothing: no record to write (a third of the script's
    Redis time per request); its settle charges the actual amount and closes the id."""
    u, rid = user(), reservation_id()
    assert reserve(now, rid, {**u, "hits_addend": 0}).status_code == 200
    assert store.exists(f"tollgate:res:{rid}") == 0
    first = settle(now, rid, {**u, "hits_addend": 30})
    again = settle(now, rid, {**u, "hits_addend": 30})  # its reply was lost: sent again
    assert first.status_code == again.status_code == 200 and again.json()["duplicate"] is True
    assert spent(now, u) == 30
    assert reserve(now, rid, {**u, "hits_addend": 0}).status_code == 409  # the id is closed


def test_a_retried_reserve_is_answered_again_and_charged_once(now):
    u, t, rid = user(), descriptor(("team", uuid.uuid4().hex)), reservation_id()
    body = [{**u, "hits_addend": 10, "per_grant": 1}, {**t, "hits_addend": 10, "per_grant": 1}]
    first = reserve(now, rid, *body)
    assert first.status_code == 200 and first.json()["granted"] == 290
    again = reserve(now, rid, *body)
    assert again.status_code == 200
    assert (again.json()["granted"], again.json()["duplicate"]) == (290, True)
    assert [spent(now, u), spent(now, t)] == [300, 300]


def test_a_release_before_the_reserve_refuses_the_late_reserve(now, store):
    u, rid = user(), reservation_id()
    released = settle(now, rid, {**u, "hits_addend": 0})  # the gateway gave up waiting
    assert released.status_code == 200 and spent(now, u) == 0
    late = reserve(now, rid, {**u, "hits_addend": 100})
    assert late.status_code == 409
    assert late.json() == {"error": f"reservation {rid} is already settled or released"}
    assert spent(now, u) == 0  # the late reserve charged nothing
    assert store.hgetall(f"tollgate:res:{rid}") == {"s": "c"}
    assert TOMBSTONE_MS - 60_000 < store.pttl(f"tollgate:res:{rid}") <= TOMBSTONE_MS


def test_a_refused_reserve_writes_nothing(now, store):
    u, rid = user(), reservation_id()
    assert reserve(now, rid, {**u, "hits_addend": 1001}).status_code == 429
    assert store.exists(f"tollgate:res:{rid}", key_of(u), key_of(u) + ":r", key_of(u) + ":l") == 0
    assert reserve(now, rid, {**u, "hits_addend": 10}).status_code == 200  # the id is still free


def test_the_record_keeps_the_buckets_and_the_leases_sit_beside_them(now, store):
    u, rid = user(), reservation_id()
    reserve(now, rid, {**u, "hits_addend": 100}, descriptor(("plan", "unlimited")), lease_ms=LEASE_MS)
    record = f"tollgate:res:{rid}"
    assert store.hgetall(record) == {
        "s": "o", "g": "-1", "n": "2", "k0": key_of(u), "p0": "tb 1000 31536000", "k1": "",
    }
    assert LEASE_MS + TOMBSTONE_MS - 60_000 < store.pttl(record) <= LEASE_MS + TOMBSTONE_MS
    bucket = key_of(u)
    assert store.hgetall(bucket + ":r") == {rid: "100"}
    [(member, deadline)] = store.zrange(bucket + ":l", 0, -1, withscores=True)
    assert member == rid
    # :r and :l outlive the bucket and any lease (1 day at most), so a level never keeps an amount they forgot.
    assert store.pttl(bucket + ":l") >= store.pttl(bucket) + MAX_LEASE_MS
    settle(now, rid, {**u, "hits_addend": 40}, descriptor(("plan", "unlimited")))
    assert store.exists(bucket + ":r", bucket + ":l") == 0  # the last lease gone, the keys with it
    assert store.hgetall(record) == {"s": "c"}


def test_an_expired_lease_comes_back_by_itself_without_a_scan(now, later, store):
    u, rid = user(), reservation_id()
    assert reserve(now, rid, {**u, "hits_addend": 400}, lease_ms=LEASE_MS).status_code == 200
    assert spent(now, u) == 400  # held: the holder may still settle
    scans = {name: store.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("scan", "keys")}
    # The holder never comes back (a replica killed with kill -9): an hour later the bucket is whole again.
    assert spent(later, u) == 0
    assert store.exists(key_of(u) + ":r", key_of(u) + ":l") == 0
    assert {name: store.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0) for name in scans} == scans
    # Its settle, when it does come, charges the actual usage: the held amount is already back.
    s = settle(later, rid, {**u, "hits_addend": 70})
    assert s.status_code == 200 and "duplicate" not in s.json()
    assert spent(later, u) == 70


def test_a_settle_after_the_lease_replaces_what_is_still_held(now, later, store):
    u, rid = user(), reservation_id()
    reserve(now, rid, {**u, "hits_addend": 400}, lease_ms=LEASE_MS)
    assert store.hget(key_of(u) + ":r", rid) == "400"  # expired, but nothing has read the bucket since
    assert settle(later, rid, {**u, "hits_addend": 70}).status_code == 200
    assert spent(later, u) == 70
    assert store.exists(key_of(u) + ":r", key_of(u) + ":l") == 0


def test_extend_keeps_a_reservation_past_its_first_lease(now, later, store):
    u, rid = user(), reservation_id()
    reserve(now, rid, {**u, "hits_addend": 400}, lease_ms=LEASE_MS)
    r = post(now, "extend", {"id": rid, "lease_ms": 2 * HOUR_MS})
    assert (r.status_code, r.json()) == (200, {"extended": True})
    deadline = store.zscore(key_of(u) + ":l", rid)
    assert store.pttl(f"tollgate:res:{rid}") > 2 * HOUR_MS + TOMBSTONE_MS - 60_000
    assert spent(later, u) == 400  # an hour on, still held
    assert store.zscore(key_of(u) + ":l", rid) == deadline
    assert settle(later, rid, {**u, "hits_addend": 50}).status_code == 200
    assert spent(later, u) == 50
    assert post(now, "extend", {"id": rid, "lease_ms": HOUR_MS}).json() == {"extended": False}  # settled
    assert post(now, "extend", {"id": reservation_id()}).json() == {"extended": False}  # unknown


def test_budget_reads_without_charging(now, store):
    u, rid = user(), reservation_id()
    reserve(now, rid, {**u, "hits_addend": 250})
    before = store.get(key_of(u))
    body = {"domain": "plane", "descriptors": [{"entries": u["entries"]}, descriptor(("plan", "unlimited")),
                                               descriptor(("nothing", "here"))]}
    replies = [post(now, "budget", body).json() for _ in range(3)]
    assert replies[0] == replies[2]
    [status, unlimited, unmatched] = replies[0]["statuses"]
    resets_at = status.pop("resetsAt")
    assert status == {
        "code": "OK", "currentLimit": {"requestsPerUnit": 1000, "unit": "YEAR"}, "limitRemaining": 750,
        "durationUntilReset": status["durationUntilReset"], "spent": 250, "algorithm": "token_bucket",
    }
    assert resets_at.endswith("Z") and len(resets_at) == 20
    assert (unlimited, unmatched) == ({"code": "OK", "limitRemaining": 4294967295}, {"code": "OK"})
    assert store.get(key_of(u)) == before  # not even rewritten


def test_settle_finds_the_bucket_it_reserved_after_a_reload(redis_url, tmp_path, store):
    for base in serving(tmp_path, redis_url, {"plane.yaml": CONFIG}):
        u, rid = user(), reservation_id()
        reserve(base, rid, {**u, "hits_addend": 100})
        # The user limit becomes a fixed window: a new bucket key from now on.
        (tmp_path / "plane.yaml").write_text(CONFIG.replace(
            "requests_per_unit: 1000, algorithm: token_bucket", "requests_per_unit: 1000, algorithm: fixed_window"))
        assert wait_until(lambda: metric(base, "tollgate_ratelimit_config_loads_total") == 2, timeout=10)
        s = settle(base, rid, {**u, "hits_addend": 30})
        assert s.json()["statuses"][0]["limitRemaining"] == 1000  # the new window, untouched
        assert float(store.get(key_of(u)).split()[0]) == pytest.approx(30, abs=0.01)  # the 100 held became 30
        assert store.exists(key_of(u) + ":r") == 0
