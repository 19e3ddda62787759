"""The gateway's API: POST /v1/reserve (all-or-nothing, elastic grants) and /v1/settle."""

import uuid

import pytest
from tests.harness.ratelimit import call, descriptor, serving

CONFIG = """
domain: tokens
descriptors:
  - key: user_id
    rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: team
    rate_limit: {unit: hour, requests_per_unit: 300}
  - key: model
    value: free
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 10}
"""


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("rl-reserve"), redis_url, {"tokens.yaml": CONFIG})


def user():
    return descriptor(("user_id", uuid.uuid4().hex))


def team():
    return descriptor(("team", uuid.uuid4().hex))


def reserve(base, *descriptors, **extra):
    return call(base, "tokens", *descriptors, path="/v1/reserve", **extra)


def settle(base, *descriptors, **extra):
    return call(base, "tokens", *descriptors, path="/v1/settle", **extra)


def remaining(response, i=0) -> int:
    return response.json()["statuses"][i].get("limitRemaining", 0)


def test_reserve_then_settle_the_actual_usage(service):
    u = user()
    r = reserve(service, {**u, "hits_addend": 100})
    assert r.status_code == 200 and r.json()["granted"] == 100 and remaining(r) == 900
    assert remaining(settle(service, {**u, "hits_addend": 50})) == 850  # used more than estimated
    assert remaining(settle(service, {**u, "hits_addend": -30})) == 880  # refund an over-estimate


def test_elastic_grant_is_bounded_by_the_tightest_budget(service):
    u, t = user(), team()
    r = reserve(service, {**u, "hits_addend": 10, "max_hits": 500}, {**t, "hits_addend": 10, "max_hits": 500})
    assert r.status_code == 200
    assert r.json()["granted"] == 300
    assert [remaining(r, 0), remaining(r, 1)] == [700, 0]


def test_refused_reservation_charges_nothing_and_names_what_tripped(service):
    u, t = user(), team()
    assert reserve(service, {**t, "hits_addend": 295}).status_code == 200
    r = reserve(service, {**u, "hits_addend": 10}, {**t, "hits_addend": 10})
    assert r.status_code == 429
    body = r.json()
    assert body["overallCode"] == "OVER_LIMIT" and body["granted"] == 0
    assert [s["code"] for s in body["statuses"]] == ["OK", "OVER_LIMIT"]
    # 5 left, 10 needed: 5 tokens at 300/h refill in 60 s (less the time since the first call).
    assert 55 <= int(body["statuses"][1]["retryAfter"].rstrip("s")) <= 60
    check = reserve(service, {**u, "hits_addend": 0})
    assert remaining(check) == 1000  # the user's budget was not touched


def test_elastic_reservation_refused_below_its_minimum(service):
    t = team()
    reserve(service, {**t, "hits_addend": 298})
    r = reserve(service, {**t, "hits_addend": 5, "max_hits": 100})
    assert r.status_code == 429 and r.json()["granted"] == 0
    ok = reserve(service, {**t, "hits_addend": 1, "max_hits": 100})
    assert ok.status_code == 200 and ok.json()["granted"] == 2


def test_settle_goes_into_debt_and_the_next_reserve_waits(service):
    u = user()
    s = settle(service, {**u, "hits_addend": 1500})
    assert s.status_code == 200 and s.json()["overallCode"] == "OK"
    assert s.json()["statuses"][0]["code"] == "OVER_LIMIT" and "retryAfter" in s.json()["statuses"][0]
    r = reserve(service, {**u, "hits_addend": 0})
    assert r.status_code == 429
    retry = int(r.json()["statuses"][0]["retryAfter"].rstrip("s"))
    assert 1790 <= retry <= 1801  # 500 tokens of debt at 1000/h


def test_refunds_stop_at_a_full_bucket(service):
    u = user()
    reserve(service, {**u, "hits_addend": 10})
    assert remaining(settle(service, {**u, "hits_addend": -100_000})) == 1000
    assert reserve(service, {**u, "hits_addend": 1001}).status_code == 429


def test_shadow_rules_never_refuse_a_reservation(service):
    u = user()
    free = descriptor(("model", "free"))
    r = reserve(service, {**u, "hits_addend": 50}, {**free, "hits_addend": 50})
    assert r.status_code == 200
    assert [s["code"] for s in r.json()["statuses"]] == ["OK", "OVER_LIMIT"]


def test_unlimited_elastic_descriptor_grants_its_max(service):
    r = reserve(service, descriptor(("nothing", "here"), hits_addend=1, max_hits=64))
    assert r.status_code == 200 and r.json()["granted"] == 64


def test_signs_are_checked_per_api(service):
    assert reserve(service, {**user(), "hits_addend": -5}).status_code == 400
    assert settle(service, {**user(), "max_hits": 5}).status_code == 400
    assert settle(service, {**user(), "hits_addend": "-5"}).status_code == 200
