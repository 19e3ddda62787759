"""The gateway's API: POST /v1/reserve (all-or-nothing, elastic grants) and /v1/settle (absolute, once)."""

import uuid

import pytest
from tests.harness.ratelimit import call, descriptor, reservation_id, serving

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
    extra.setdefault("id", reservation_id())
    return call(base, "tokens", *descriptors, path="/v1/reserve", **extra)


def settle(base, rid, *descriptors, **extra):
    return call(base, "tokens", *descriptors, path="/v1/settle", id=rid, **extra)


def remaining(response, i=0) -> int:
    return response.json()["statuses"][i].get("limitRemaining", 0)


def test_reserve_then_settle_the_actual_usage(service):
    u, rid = user(), reservation_id()
    r = reserve(service, {**u, "hits_addend": 100}, id=rid)
    assert r.status_code == 200 and r.json()["granted"] == 100 and remaining(r) == 900
    s = settle(service, rid, {**u, "hits_addend": 30})  # the actual usage replaces the 100 held
    assert s.status_code == 200 and remaining(s) == 970
    more = reservation_id()
    reserve(service, {**u, "hits_addend": 100}, id=more)
    assert remaining(settle(service, more, {**u, "hits_addend": 150})) == 820  # used more than estimated


def test_elastic_grant_is_bounded_by_the_tightest_budget(service):
    u, t = user(), team()
    r = reserve(service, {**u, "hits_addend": 10, "per_grant": 1}, {**t, "hits_addend": 10, "per_grant": 1},
                max_grant=500)
    assert r.status_code == 200
    assert r.json()["granted"] == 290  # the team's 300 less its 10 fixed tokens
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
    reserve(service, {**t, "hits_addend": 296})
    r = reserve(service, {**t, "hits_addend": 5, "per_grant": 1})  # 4 left: 5 fixed tokens do not fit
    assert r.status_code == 429 and r.json()["granted"] == 0
    assert reserve(service, {**t, "hits_addend": 1, "per_grant": 1}, min_grant=4).status_code == 429
    ok = reserve(service, {**t, "hits_addend": 1, "per_grant": 1}, max_grant=100)
    assert ok.status_code == 200 and ok.json()["granted"] == 3 and remaining(ok) == 0


def test_settle_without_a_reservation_charges_it_and_may_go_into_debt(service):
    u = user()
    s = settle(service, reservation_id(), {**u, "hits_addend": 1500})
    assert s.status_code == 200 and s.json()["overallCode"] == "OK"
    assert s.json()["statuses"][0]["code"] == "OVER_LIMIT" and "retryAfter" in s.json()["statuses"][0]
    r = reserve(service, {**u, "hits_addend": 0})
    assert r.status_code == 429
    retry = int(r.json()["statuses"][0]["retryAfter"].rstrip("s"))
    assert 1790 <= retry <= 1801  # 500 tokens of debt at 1000/h


def test_a_release_gives_everything_back_and_levels_never_go_below_empty(service):
    u, rid = user(), reservation_id()
    reserve(service, {**u, "hits_addend": 10}, id=rid)
    assert remaining(settle(service, rid, {**u, "hits_addend": 0})) == 1000  # a release: every hits_addend 0
    assert reserve(service, {**u, "hits_addend": 1001}).status_code == 429  # never above capacity


def test_shadow_rules_answer_ok_and_never_refuse_a_reservation(service):
    u = user()
    free = descriptor(("model", "free"))
    r = reserve(service, {**u, "hits_addend": 50}, {**free, "hits_addend": 50})
    assert r.status_code == 200 and r.json()["overallCode"] == "OK"
    assert [s["code"] for s in r.json()["statuses"]] == ["OK", "OK"]  # envoy's shadow mode: OK in the status too
    assert "limitRemaining" not in r.json()["statuses"][1]


def test_unlimited_elastic_descriptor_grants_max_grant(service):
    r = reserve(service, descriptor(("nothing", "here"), hits_addend=1, per_grant=1), max_grant=64)
    assert r.status_code == 200 and r.json()["granted"] == 64


def test_fields_are_checked_per_api(service):
    assert reserve(service, {**user(), "hits_addend": -5}).status_code == 400
    assert reserve(service, {**user(), "max_hits": 5}).status_code == 400  # replaced by per_grant / max_grant
    no_id = call(service, "tokens", {**user(), "hits_addend": 5}, path="/v1/reserve")
    assert no_id.status_code == 400 and no_id.json()["error"] == "id: required, the reservation's id"
    negative = settle(service, reservation_id(), {**user(), "hits_addend": "-5"})  # settles are absolute now
    assert negative.status_code == 400 and "descriptors[0].hits_addend: -5 is out of range" in negative.text
    assert settle(service, reservation_id(), {**user(), "per_grant": 5}).status_code == 400
    assert settle(service, reservation_id(), {**user(), "hits_addend": "5"}).status_code == 200
