"""tollgate_ratelimit_limit and tollgate_ratelimit_remaining, scraped from a real service."""

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.harness.ratelimit import call, descriptor, metric, reservation_id, serving, wait_until

CONFIG = """
domain: tokens
descriptors:
  - key: user_id
    rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: team
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 300}
  - key: plan
    value: unlimited
    rate_limit: {unlimited: true}
"""


@pytest.fixture
def service(redis_url, tmp_path):
    for base in serving(tmp_path, redis_url, {"tokens.yaml": CONFIG}):
        yield base, tmp_path


def user() -> dict:
    return descriptor(("user_id", uuid.uuid4().hex))


def remaining(base: str, key: str) -> float:
    return metric(base, "tollgate_ratelimit_remaining", domain="tokens", descriptor=key)


def limit(base: str, key: str, unit: str) -> float:
    return metric(base, "tollgate_ratelimit_limit", domain="tokens", descriptor=key, unit=unit)


def series(base: str, name: str) -> list[dict[str, str]]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return [s.labels for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def test_gauges_follow_the_latest_decision_of_any_api(service):
    base, _ = service
    u = user()
    first, second = reservation_id(), reservation_id()
    assert series(base, "tollgate_ratelimit_remaining") == []  # nothing decided yet
    assert call(base, "tokens", {**u, "hits_addend": 100}, path="/v1/reserve", id=first).status_code == 200
    assert (remaining(base, "user_id"), limit(base, "user_id", "hour")) == (900, 1000)
    call(base, "tokens", {**u, "hits_addend": 150}, path="/v1/settle", id=first)
    assert remaining(base, "user_id") == 850
    call(base, "tokens", {**u, "hits_addend": 25}, path="/json")
    assert remaining(base, "user_id") == 825
    call(base, "tokens", {**u, "hits_addend": 100}, path="/v1/reserve", id=second)
    assert remaining(base, "user_id") == 725
    items = [{"op": "settle", "domain": "tokens", "id": second, "descriptors": [{**u, "hits_addend": 25}]}]
    httpx.post(f"{base}/v1/batch", json={"items": items}, timeout=5)
    assert remaining(base, "user_id") == 800


def test_remaining_is_what_the_reply_said_refused_or_in_debt(service):
    base, _ = service
    u = user()
    refused = call(base, "tokens", {**u, "hits_addend": 1001}, path="/v1/reserve", id=reservation_id())
    assert refused.status_code == 429 and "limitRemaining" not in refused.json()["statuses"][0]
    assert remaining(base, "user_id") == 0
    call(base, "tokens", {**u, "hits_addend": 1}, path="/v1/reserve", id=reservation_id())
    assert remaining(base, "user_id") == 999
    call(base, "tokens", {**u, "hits_addend": 1500}, path="/v1/settle", id=reservation_id())  # into debt
    assert remaining(base, "user_id") == 0


def test_labels_are_the_decision_counters_own(service):
    base, _ = service
    users = [user() for _ in range(5)]
    teams = [uuid.uuid4().hex for _ in range(3)]
    def reserve(domain, d):
        return call(base, domain, d, path="/v1/reserve", id=reservation_id())

    for u in users:
        reserve("tokens", {**u, "hits_addend": 10})
    for i, team in enumerate(teams):
        reserve("tokens", descriptor(("team", team), hits_addend=i + 1))
    reserve("tokens", descriptor(("plan", "unlimited")))
    reserve("elsewhere", user())
    reserve("tokens", descriptor(("unmatched", "x")))

    counted = {(s["domain"], s["descriptor"]) for s in series(base, "tollgate_ratelimit_decisions_total")}
    kept = {(s["domain"], s["descriptor"]) for s in series(base, "tollgate_ratelimit_remaining")}
    limits = {(s["domain"], s["descriptor"], s["unit"]) for s in series(base, "tollgate_ratelimit_limit")}
    # One series per config entry; one per runtime value only where detailed_metric asks for it.
    detailed = {("tokens", f"team_{t}") for t in teams}
    assert kept == {("tokens", "user_id")} | detailed
    assert limits == {("tokens", "user_id", "hour")} | {(d, k, "minute") for d, k in detailed}
    # The unlimited descriptor is counted but has no budget to show.
    assert counted == kept | {("tokens", "plan_unlimited")}
    assert [remaining(base, f"team_{t}") for t in teams] == [299, 298, 297]
    assert {limit(base, f"team_{t}", "minute") for t in teams} == {300}


def test_the_limit_gauge_takes_a_reloaded_limit_at_the_next_decision(service):
    base, config_dir = service
    u = user()
    call(base, "tokens", {**u, "hits_addend": 10}, path="/v1/reserve", id=reservation_id())
    assert limit(base, "user_id", "hour") == 1000
    (config_dir / "tokens.yaml").write_text(CONFIG.replace("requests_per_unit: 1000", "requests_per_unit: 2000"))
    assert wait_until(lambda: metric(base, "tollgate_ratelimit_config_loads_total") == 2, timeout=10)
    call(base, "tokens", {**u, "hits_addend": 0}, path="/v1/reserve", id=reservation_id())
    assert (limit(base, "user_id", "hour"), remaining(base, "user_id")) == (2000, 1990)
