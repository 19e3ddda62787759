"""A batch decided in one script call: one EVALSHA per batch, failures kept to their own items."""

import hashlib
import uuid

import httpx
import pytest
import redis
from tests.harness.ratelimit import call, descriptor, metric, reservation_id, serving

from ratelimit_service.batch import run_batch
from ratelimit_service.config import load_texts
from ratelimit_service.limiter import RESERVE, Call, Check, Limiter, LimiterError, bucket_key, load_script
from ratelimit_service.redis_client import PipelinedRedis
from ratelimit_service.service import Service
from ratelimit_service.stats import Stats

CONFIG = "domain: d\ndescriptors:\n  - key: user_id\n    rate_limit: {unit: hour, requests_per_unit: 100}\n"
SHA = hashlib.sha1(load_script().encode()).hexdigest()


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("rl-batch-script"), redis_url, {"d.yaml": CONFIG})


@pytest.fixture
def store(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def user() -> str:
    return uuid.uuid4().hex


def item(op: str, who: str, hits: int, domain: str = "d", rid: str | None = None) -> dict:
    return {"op": op, "domain": domain, "id": rid or reservation_id(),
            "descriptors": [descriptor(("user_id", who), hits_addend=hits)]}


def batch(base: str, *items: dict) -> list[tuple[int, dict]]:
    r = httpx.post(f"{base}/v1/batch", json={"items": list(items)}, timeout=10)
    assert r.status_code == 200, r.text
    return [(a["status"], a["body"]) for a in r.json()["items"]]


def left(base: str, who: str) -> int:
    reply = call(base, "d", descriptor(("user_id", who)), path="/v1/budget").json()
    return reply["statuses"][0]["limitRemaining"]


def evalsha_calls(store) -> int:
    return store.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def test_a_batch_is_one_script_call(service, store):
    users = [user() for _ in range(10)]
    batch(service, item("reserve", users[0], 1))  # the script is cached from here on
    before = evalsha_calls(store)
    ids = [reservation_id() for _ in users]
    items = [item("reserve", u, 0, rid=r) for u, r in zip(users, ids)]
    items += [item("settle", u, 30, rid=r) for u, r in zip(users, ids)]
    items.append(item("settle", user(), 30, domain="nowhere"))  # needs no Redis
    replies = batch(service, *items)
    assert evalsha_calls(store) - before == 1
    assert [s for s, _ in replies] == [200] * len(items)
    assert [b["statuses"][0]["limitRemaining"] for _, b in replies[10:20]] == [69] + [70] * 9


def test_a_batch_after_script_flush_reloads_the_script(service, store):
    a, b = user(), user()
    batch(service, item("reserve", a, 1))
    store.script_flush()
    assert store.script_exists(SHA) == [False]
    replies = batch(service, item("reserve", a, 10), item("settle", b, 30), item("reserve", b, 80))
    assert [(s, body["statuses"][0].get("limitRemaining")) for s, body in replies] == [
        (200, 89), (200, 70), (429, None),  # refused: no limitRemaining
    ]
    assert store.script_exists(SHA) == [True]
    assert left(service, a) == 89 and left(service, b) == 70


def test_an_item_redis_fails_fails_alone_and_the_others_are_decided(service, store):
    wrong_type, corrupt, a, b = user(), user(), user(), user()
    store.hset(bucket_key("d", "tb", (("user_id", wrong_type),)), "x", "1")
    store.set(bucket_key("d", "tb", (("user_id", corrupt),)), "not a level")
    errors = metric(service, "tollgate_ratelimit_redis_errors_total")
    replies = batch(
        service,
        item("reserve", a, 10),
        item("reserve", wrong_type, 1),
        item("settle", corrupt, 5),
        item("settle", b, 7),
    )
    assert [s for s, _ in replies] == [200, 500, 500, 200]
    single = call(service, "d", descriptor(("user_id", wrong_type), hits_addend=1), path="/v1/reserve",
                  id=reservation_id())
    wrong = "rate limit store unavailable: WRONGTYPE Operation against a key holding the wrong kind of value"
    assert single.status_code == 500 and single.json()["error"].startswith(wrong)
    assert replies[1][1]["error"].startswith(wrong)
    assert replies[2][1]["error"].startswith("rate limit store unavailable: ")
    assert "user_script:" in replies[2][1]["error"]  # the script's own error, named
    assert metric(service, "tollgate_ratelimit_redis_errors_total") - errors == 3  # 2 in the batch, 1 single
    assert left(service, a) == 90 and left(service, b) == 93
    assert store.type(bucket_key("d", "tb", (("user_id", wrong_type),))) == b"hash"  # untouched


def fresh() -> str:
    return f"test:{uuid.uuid4().hex}"


async def test_a_reply_that_does_not_match_the_batch_fails_every_item(redis_url):
    """A script answering the wrong number of lines must not leave an item answered by another's reply."""
    lim = Limiter(PipelinedRedis(redis_url), script="return 'one line'")
    with pytest.raises(LimiterError, match="answered 1 replies for 2 requests"):
        await lim.decide_many([Call(RESERVE, [Check(fresh(), "tb", 10, 60, 1)], id="r", descriptors=1)] * 2)
    stats = Stats()
    service = Service(load_texts([("d.yaml", CONFIG)]), lim, stats)
    items = [("reserve", {"domain": "d", "id": reservation_id(), "descriptors": [descriptor(("user_id", user()))]})
             for _ in range(3)]
    items.append(("settle", {"domain": "nowhere", "id": "x", "descriptors": [descriptor(("user_id", "x"))]}))
    answers = (await run_batch(service, items))["items"]
    error = "rate limit store unavailable: the batch script answered 1 replies for 3 requests"
    assert answers[:3] == [{"status": 500, "body": {"error": error}}] * 3
    assert answers[3] == {"status": 200, "body": {"overallCode": "OK", "statuses": [{"code": "OK"}]}}
    assert stats.redis_errors == 3
    await lim.close()
    stats.shutdown()
