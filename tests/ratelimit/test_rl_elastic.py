"""Elastic grants in output units, and dollar budgets in micro-dollars, decided together.

A request without max_tokens reserves its prompt (hits_addend) plus whatever
grant g its budgets allow, each elastic descriptor paying per_grant per unit
of g: 1 token per token for a token budget, the output price in micro-dollars
for a dollar budget. Buckets are token buckets over a year: no number moves
while the tests run.
"""

import uuid

import httpx
import pytest
from tests.harness.ratelimit import descriptor, metric, reservation_id, serving

CONFIG = """
domain: spend
descriptors:
  - key: user_id
    rate_limit: {unit: year, requests_per_unit: 1000, algorithm: token_bucket}
  - key: user_usd
    rate_limit: {unit: year, usd: "0.001", algorithm: token_bucket}
  - key: team_usd
    shadow_mode: true
    rate_limit: {unit: year, usd: 1, algorithm: token_bucket}
"""
PRICE = 0.6  # micro-dollars per output token ($0.60 per 1M)


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("rl-elastic"), redis_url, {"spend.yaml": CONFIG})


def who() -> str:
    return uuid.uuid4().hex


def post(base: str, op: str, body: dict) -> httpx.Response:
    return httpx.post(f"{base}/{op}", json={"domain": "spend", **body}, timeout=5)


def reserve(base: str, *descriptors: dict, **extra) -> httpx.Response:
    return post(base, "v1/reserve", {"id": reservation_id(), "descriptors": list(descriptors), **extra})


def budget(base: str, *descriptors: dict) -> list[dict]:
    body = {"descriptors": [{"entries": d["entries"]} for d in descriptors]}
    return post(base, "v1/budget", body).json()["statuses"]


def test_a_dollar_budget_counts_micro_dollars_and_says_so(service):
    usd = descriptor(("user_usd", who()))
    [status] = budget(service, usd)
    assert status["currentLimit"] == {"requestsPerUnit": 1000, "unit": "YEAR", "usd": True}
    assert (status["limitRemaining"], status["spent"]) == (1000, 0)
    envoy = post(service, "json", {"descriptors": [{**usd, "hits_addend": 250}]}).json()["statuses"][0]
    assert envoy["currentLimit"] == {"requestsPerUnit": 1000, "unit": "YEAR"}  # /json: envoy's fields only
    assert envoy["limitRemaining"] == 750


def test_one_grant_covers_a_token_budget_and_a_dollar_budget(service):
    name = who()
    tokens = descriptor(("user_id", name), hits_addend=100, per_grant=1)  # a 100-token prompt bound
    usd = descriptor(("user_usd", name), hits_addend=60, per_grant=PRICE)  # its cost: 60 micro-dollars
    r = reserve(service, tokens, usd)
    # tokens: (1000 - 100) / 1 = 900; dollars: (1000 - 60) / 0.6 = 1566: the tokens bind.
    assert r.status_code == 200 and r.json()["granted"] == 900
    assert [s["spent"] for s in budget(service, tokens, usd)] == [1000, 60 + 540]

    poorer = who()
    post(service, "v1/settle", {"id": reservation_id(), "descriptors": [descriptor(("user_usd", poorer),
                                                                                    hits_addend=700)]})
    tokens, usd = descriptor(("user_id", poorer), hits_addend=100, per_grant=1), \
        descriptor(("user_usd", poorer), hits_addend=60, per_grant=PRICE)
    r = reserve(service, tokens, usd, max_grant=4096)
    # dollars now bind: (300 - 60) / 0.6 = 400 tokens, exactly the 300 micro-dollars left.
    assert r.json()["granted"] == 400
    assert [s["limitRemaining"] for s in budget(service, tokens, usd)] == [500, 0]


def test_the_dollar_side_refuses_below_min_grant_and_says_when(service):
    name = who()
    post(service, "v1/settle", {"id": reservation_id(), "descriptors": [descriptor(("user_usd", name), hits_addend=990)]})
    tokens = descriptor(("user_id", name), hits_addend=10, per_grant=1)
    usd = descriptor(("user_usd", name), hits_addend=4, per_grant=PRICE)
    r = reserve(service, tokens, usd, min_grant=20)  # 6 micro-dollars left: 10 tokens' worth
    assert r.status_code == 429 and r.json()["granted"] == 0
    assert [s["code"] for s in r.json()["statuses"]] == ["OK", "OVER_LIMIT"]
    assert r.json()["statuses"][1]["retryAfter"]
    assert [s["spent"] for s in budget(service, tokens, usd)] == [0, 990]  # nothing charged
    ok = reserve(service, tokens, usd, min_grant=10)
    assert ok.status_code == 200 and ok.json()["granted"] == 10


def test_max_grant_caps_and_the_settle_replaces_the_grant_with_the_actual(service):
    name, rid = who(), reservation_id()
    tokens = descriptor(("user_id", name), hits_addend=100, per_grant=1)
    usd = descriptor(("user_usd", name), hits_addend=60, per_grant=PRICE)
    r = post(service, "v1/reserve", {"id": rid, "descriptors": [tokens, usd], "max_grant": 256})
    assert r.json()["granted"] == 256
    assert [s["spent"] for s in budget(service, tokens, usd)] == [356, 60 + 154]  # ceil(256 * 0.6) = 154
    actual = [descriptor(("user_id", name), hits_addend=180), descriptor(("user_usd", name), hits_addend=108)]
    post(service, "v1/settle", {"id": rid, "descriptors": actual})
    assert [s["spent"] for s in budget(service, tokens, usd)] == [180, 108]


def test_elastic_descriptors_on_one_bucket_are_summed(service):
    name = who()
    once = descriptor(("user_id", name), hits_addend=10, per_grant=1)
    twice = descriptor(("user_id", name), hits_addend=10, per_grant=0.5)  # the same bucket again
    r = reserve(service, once, twice)
    # 980 left after the fixed 20: g + ceil(g / 2) <= 980 gives g = 653 (653 + 327 = 980).
    assert r.status_code == 200 and r.json()["granted"] == 653
    assert budget(service, once)[0]["spent"] == 1000


def test_a_shadow_dollar_budget_does_not_bound_the_grant(service):
    name = who()
    tokens = descriptor(("user_id", name), hits_addend=0, per_grant=1)
    team = descriptor(("team_usd", name), hits_addend=0, per_grant=5000)  # $1: 200 tokens' worth
    shadowed = metric(service, "tollgate_ratelimit_shadow_mode_total", domain="spend", descriptor="team_usd")
    r = reserve(service, tokens, team)
    assert r.status_code == 200 and r.json()["granted"] == 1000  # the token budget alone decides
    assert [s["code"] for s in r.json()["statuses"]] == ["OK", "OK"]
    assert budget(service, team)[0]["spent"] == 5_000_000  # charged what it would have cost
    assert metric(service, "tollgate_ratelimit_shadow_mode_total", domain="spend", descriptor="team_usd") \
        == shadowed + 1  # and counted as what it would have refused
