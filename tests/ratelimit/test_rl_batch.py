"""POST /v1/batch: each item answered exactly as its single /v1/<op> call."""

import math
import re
import time
import uuid
from datetime import datetime

import httpx
import pytest
from tests.harness.ratelimit import call, descriptor, metric, reservation_id, serving

CONFIG = """
domain: tokens
descriptors:
  - key: user_id
    rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: team
    rate_limit: {unit: hour, requests_per_unit: 300}
  - key: model
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: plan
    value: unlimited
    rate_limit: {unlimited: true}
"""


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("rl-batch"), redis_url, {"tokens.yaml": CONFIG})


def fresh(key: str) -> dict:
    return descriptor((key, uuid.uuid4().hex))


def item(op: str, *descriptors: dict, domain: str = "tokens", **extra) -> dict:
    """An item; reserves and settles get a fresh reservation id unless given one (id=None: none)."""
    if op in ("reserve", "settle") and "id" not in extra:
        extra["id"] = reservation_id()
    if extra.get("id") is None:
        extra.pop("id", None)
    if op == "extend":  # an id and a lease, nothing else
        return {"op": op, **extra}
    return {"op": op, "domain": domain, "descriptors": list(descriptors), **extra}


def batch(base: str, *items: dict) -> httpx.Response:
    return httpx.post(f"{base}/v1/batch", json={"items": list(items)}, timeout=10)


def answers(response: httpx.Response) -> list[tuple[int, dict]]:
    assert response.status_code == 200, response.text
    return [(a["status"], a["body"]) for a in response.json()["items"]]


def remaining(base: str, d: dict) -> int:
    """What the bucket has left, read with /v1/budget (charges nothing)."""
    return call(base, "tokens", {"entries": d["entries"]}, path="/v1/budget").json()["statuses"][0]["limitRemaining"]


def test_mixed_items(service):
    u, t = fresh("user_id"), fresh("team")
    held = reservation_id()
    replies = answers(batch(
        service,
        item("reserve", {**u, "hits_addend": 100}, id=held),
        item("settle", {**t, "hits_addend": 40}),
        item("reserve", {**t, "hits_addend": 10, "per_grant": 1}, max_grant=500),
        item("extend", id=held, lease_ms=60_000),
        item("budget", {"entries": u["entries"]}, id=None),
    ))
    assert [status for status, _ in replies] == [200, 200, 200, 200, 200]
    (_, reserved), (_, settled), (_, elastic), (_, extended), (_, budget) = replies
    assert reserved["granted"] == 100 and reserved["statuses"][0]["limitRemaining"] == 900
    assert "granted" not in settled and settled["statuses"][0]["limitRemaining"] == 260
    assert elastic["granted"] == 250  # the settle before it in the batch left 260, 10 of them fixed
    assert extended == {"extended": True}
    assert budget["statuses"][0]["limitRemaining"] == 900 and budget["statuses"][0]["spent"] == 100
    assert remaining(service, u) == 900 and remaining(service, t) == 0


def test_an_over_limit_item_is_refused_alone(service):
    ok_user, full_user = fresh("user_id"), fresh("user_id")
    replies = answers(batch(
        service,
        item("reserve", {**ok_user, "hits_addend": 10}),
        item("reserve", {**full_user, "hits_addend": 1001}),
    ))
    (ok_status, ok), (over_status, over) = replies
    assert ok_status == 200 and ok["overallCode"] == "OK" and ok["granted"] == 10
    assert over_status == 429 and over["overallCode"] == "OVER_LIMIT" and over["granted"] == 0
    assert over["statuses"][0]["code"] == "OVER_LIMIT" and over["statuses"][0]["retryAfter"]
    assert remaining(service, ok_user) == 990 and remaining(service, full_user) == 1000  # refused: nothing charged


def test_a_bad_item_gets_its_own_400_and_the_others_are_decided(service):
    u1, u2 = fresh("user_id"), fresh("user_id")
    replies = answers(batch(
        service,
        item("reserve", {**u1, "hits_addend": 5}),
        item("reserve"),
        item("settle", {**u2, "hits_addend": 1, "per_grant": 9}),
        item("settle", {"entries": [{"key": "user_id", "value": 7}]}),
        item("reserve", {**u2, "hits_addend": 7}, hits_addend="many"),
        item("settle", {**u2, "hits_addend": 3}),
        item("reserve", {**u2, "hits_addend": 3}, id=None),
        item("settle", {**u2, "hits_addend": -3}),
    ))
    assert replies[1] == (400, {"error": "rate limit descriptor list must not be empty"})
    assert replies[2] == (400, {"error": 'descriptors[0].unknown field "per_grant"'})  # elastic is reserve-only
    assert replies[3] == (400, {"error": "descriptors[0].entries[0].value: expected a string"})
    assert replies[4] == (400, {"error": 'hits_addend: expected an integer, got "many"'})
    assert replies[6] == (400, {"error": "id: required, the reservation's id"})
    assert replies[7] == (400, {"error": "descriptors[0].hits_addend: -3 is out of range [0, 9007199254740992]"})
    assert replies[0][0] == 200 and replies[5][0] == 200
    assert remaining(service, u1) == 995 and remaining(service, u2) == 997


def test_replies_come_in_the_order_of_the_items(service):
    users = [fresh("user_id") for _ in range(40)]
    # Distinct charges per bucket, and one bucket charged several times in a row.
    items = [item("reserve", {**u, "hits_addend": i + 1}) for i, u in enumerate(users)]
    items += [item("settle", {**users[0], "hits_addend": 10}) for _ in range(5)]  # five unreserved ids
    replies = answers(batch(service, *items))
    assert len(replies) == len(items)
    left = [body["statuses"][0]["limitRemaining"] for _, body in replies]
    assert left[:40] == [1000 - (i + 1) for i in range(40)]
    assert left[40:] == [989, 979, 969, 959, 949]


def test_limits_without_redis_and_unknown_domains_answer_as_single_calls(service):
    replies = answers(batch(
        service,
        item("reserve", descriptor(("plan", "unlimited"), hits_addend=5)),
        item("settle", descriptor(("user_id", "x"), hits_addend=5), domain="nowhere"),
    ))
    assert replies == [
        (200, {"overallCode": "OK", "statuses": [{"code": "OK", "limitRemaining": 4294967295}], "granted": 5}),
        (200, {"overallCode": "OK", "statuses": [{"code": "OK"}]}),
    ]
    # No limit: nothing to hold, so no record either (the same id is not refused later).
    rid = reservation_id()
    unlimited = item("reserve", descriptor(("plan", "unlimited"), hits_addend=5), id=rid)
    assert answers(batch(service, item("settle", descriptor(("plan", "unlimited")), id=rid), unlimited))[1][0] == 200


def scenario() -> list[dict]:
    """Items covering every kind of answer, on buckets and ids no other test or run touches."""
    u, t, m = fresh("user_id"), fresh("team"), fresh("model")
    first, elastic, late = reservation_id(), reservation_id(), reservation_id()
    return [
        item("reserve", {**u, "hits_addend": 100}, id=first),
        item("reserve", {**u, "hits_addend": 10, "per_grant": 1}, {**t, "hits_addend": 10, "per_grant": 1},
             id=elastic, max_grant=4000),
        item("reserve", {**t, "hits_addend": 5}),
        item("settle", {**u, "hits_addend": 50}, id=first),
        item("settle", {**u, "hits_addend": 50}, id=first),  # a duplicate: nothing changes
        item("reserve", {**u, "hits_addend": 1}, {**m, "hits_addend": 20}),
        item("settle", {**u, "hits_addend": 5}, {**t, "hits_addend": "3"}, id=elastic),
        item("reserve", {**u, "hits_addend": 2}, hits_addend=3, id=elastic),  # closed: 409
        item("reserve", {**u, "hits_addend": 2}, hits_addend=3),
        item("reserve", {**fresh("user_id"), "limit": {"requests_per_unit": 2, "unit": "HOUR"}, "hits_addend": 3}),
        item("settle", {**u, "hits_addend": 1}, domain=""),
        item("reserve", {**u, "hits_addend": -1}),
        item("settle", descriptor(("plan", "unlimited"))),
        item("settle", {**u, "hits_addend": 5}, domain="nowhere"),
        item("settle", {**t, "hits_addend": 400}),  # into debt: OVER_LIMIT in the status, still 200
        item("budget", {"entries": t["entries"]}, id=None),  # a view of the debt
        item("extend", id=late, lease_ms=1000),  # nothing to extend
        item("reserve", {**u, "hits_addend": 3}, {**t, "hits_addend": 0}, {**m, "hits_addend": 0}),
    ]


DURATION = re.compile(r"'(\d+)s'")
TIMESTAMP = re.compile(r"'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)'")


def normalized(status: int, body: dict) -> tuple[int, str, list[int]]:
    """(status, body with bucket ids, durations and times blanked, those durations and times in seconds)."""
    text = re.sub(r"[0-9a-f]{32}", "ID", repr(body))
    seconds = [int(s) for s in DURATION.findall(text)]
    seconds += [int(datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ").timestamp()) for t in TIMESTAMP.findall(text)]
    return status, TIMESTAMP.sub("'T'", DURATION.sub("'Ns'", text)), seconds


def test_each_item_answers_exactly_as_its_single_call(service):
    single_items, batch_items = scenario(), scenario()
    singles = []
    started = time.monotonic()
    for it in single_items:
        op, body = it.pop("op"), it
        r = httpx.post(f"{service}/v1/{op}", json=body, timeout=5)
        singles.append((r.status_code, r.json()))
    batched = answers(batch(service, *batch_items))
    # A bucket's durationUntilReset counts down with the clock: the batch runs this much
    # later than the first single call, however loaded the machine is.
    slack = math.ceil(time.monotonic() - started) + 1
    assert [s for s, _ in singles] == [
        200, 200, 429, 200, 200, 200, 200, 409, 200, 429, 400, 400, 200, 200, 200, 200, 200, 429,
    ]
    assert singles[4][1]["duplicate"] is True and singles[14][1]["statuses"][0]["code"] == "OVER_LIMIT"
    assert singles[15][1]["statuses"][0]["spent"] == 403 and singles[16][1] == {"extended": False}
    for (status, text, durations), (want_status, want_text, want_durations) in zip(
        map(lambda a: normalized(*a), batched), map(lambda a: normalized(*a), singles), strict=True,
    ):
        assert (status, text) == (want_status, want_text)
        assert len(durations) == len(want_durations)
        assert all(abs(a - b) <= slack for a, b in zip(durations, want_durations)), (durations, want_durations)


def test_a_malformed_batch_is_a_400_naming_the_problem_and_decides_nothing(service):
    u = fresh("user_id")
    good = item("reserve", {**u, "hits_addend": 1})
    url = f"{service}/v1/batch"
    cases = [
        (b"{", "invalid JSON"),
        (b"[]", "the batch must be a JSON object"),
        (b"{}", "items: expected a list"),
        (b'{"items": {}}', "items: expected a list"),
        (b'{"items": [], "extra": 1}', 'unknown field "extra"'),
    ]
    for raw, message in cases:
        r = httpx.post(url, content=raw, timeout=5)
        assert r.status_code == 400 and r.json()["error"].startswith(message), (raw, r.text)
    ops = "items[1].op must be reserve, settle, extend or budget"
    for bad, message in [
        ({"domain": "tokens", "descriptors": []}, ops),
        ({**good, "op": "json"}, ops),
        ({**good, "op": ["reserve"]}, ops),
        ("reserve", "items[1] must be an object"),
    ]:
        r = httpx.post(url, json={"items": [good, bad, good]}, timeout=5)
        assert (r.status_code, r.json()) == (400, {"error": message})
    too_many = httpx.post(url, json={"items": [good] * 1001}, timeout=10)
    assert too_many.status_code == 400 and too_many.json() == {"error": "items: 1001 items, at most 1000 per batch"}
    assert remaining(service, u) == 1000
    huge = httpx.post(url, content=b" " * (8 << 20) + b"{}", timeout=10)
    assert huge.status_code == 413 and huge.json() == {"error": f"request body over {8 << 20} bytes"}
    assert httpx.get(url, timeout=5).status_code == 405
    assert answers(batch(service)) == []


def test_items_are_counted_in_the_decision_metrics_under_their_own_api(service):
    labels = {"domain": "tokens", "descriptor": "team"}

    def counts() -> tuple[float, ...]:
        return (
            metric(service, "tollgate_ratelimit_decisions_total", api="reserve", code="OK", **labels),
            metric(service, "tollgate_ratelimit_decisions_total", api="reserve", code="OVER_LIMIT", **labels),
            metric(service, "tollgate_ratelimit_decisions_total", api="settle", code="OK", **labels),
            metric(service, "tollgate_ratelimit_hits_total", api="reserve", **labels),
            metric(service, "tollgate_ratelimit_requests_total", path="/v1/batch", status="200"),
        )

    t = fresh("team")
    first = reservation_id()
    before = counts()
    answers(batch(
        service,
        item("reserve", {**t, "hits_addend": 200}, id=first),
        item("reserve", {**t, "hits_addend": 200}),
        item("settle", {**t, "hits_addend": 0}, id=first),  # released
        item("reserve", {**t, "hits_addend": 50}),
        item("budget", {"entries": t["entries"]}, id=None),  # a view, not a decision
    ))
    after = counts()
    assert [a - b for a, b in zip(after, before)] == [2, 1, 1, 250, 1]
