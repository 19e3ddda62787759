"""Budgets as their owners mean them, on real processes: redis-server, the rate-limit
service, three gateway replicas and the mock upstream.

- a dollar budget in hard mode is never exceeded, by one micro-dollar, under concurrent
  traffic across the replicas, and charges exactly what the mock billed, priced;
- a model with no price under a dollar budget is refused, never served free;
- every key gets the default budgets, a team's is shared by its keys, and GET
  /v1/budget shows a key its own budgets and charges nothing;
- a calendar day starts again at local midnight in a non-UTC timezone (the service's
  clock moved just before it, through TOLLGATE_CLOCK_OFFSET), and the 429 says so;
- `llm.cost` prices a `cost` expression and a metric field.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from tests.harness.stack import Stack

# USD per 1M tokens = micro-dollars per token: whole numbers, so the cost of what the
# mock billed is plain arithmetic, with no rounding to argue about.
PRICE_IN, PRICE_OUT = 2, 10
MODEL = "gpt-4o"
SPENDER_USD = "0.02"  # 20,000 micro-dollars: ~40 of the requests below
KEYS = {
    "sk-spender": {"user_id": "spender"},
    "sk-alice": {"user_id": "alice", "team": "research"},
    "sk-bob": {"user_id": "bob", "team": "research"},
    "sk-solo": {"user_id": "solo"},  # no team: the team budget does not apply
}


def domain(extra: list[dict] | None = None) -> str:
    return yaml.safe_dump({"domain": "budgets", "descriptors": [
        {"key": "user_id", "rate_limit": {"unit": "day", "requests_per_unit": 1_000_000}},
        {"key": "user_usd", "rate_limit": {"unit": "month", "usd": 50}},
        {"key": "user_usd", "value": "spender", "rate_limit": {"unit": "month", "usd": float(SPENDER_USD)}},
        {"key": "team_usd", "rate_limit": {"unit": "month", "usd": 500}},
        *(extra or []),
    ]})


def gateway_config(stack: Stack, mock_url: str, keys: dict[str, dict] = KEYS) -> dict:
    return {
        "config": {
            "metrics": {"fields": {"add": {"user_id": "apiKey.user_id"}}},
            "modelCatalog": {MODEL: {"input": PRICE_IN, "output": PRICE_OUT}},
        },
        "llm": {
            "port": "@PORT@",
            "policies": {
                "apiKey": {"keys": [{"key": k, "metadata": m} for k, m in keys.items()]},
                "remoteRateLimit": {
                    "host": stack.ratelimit_host, "domain": "budgets", "failureMode": "failClosed",
                    "descriptors": [
                        {"entries": [{"key": "user_id", "value": "apiKey.user_id"}], "type": "tokens"},
                        {"entries": [{"key": "user_usd", "value": "apiKey.user_id"}], "type": "usd",
                         "enforcement": "hard"},
                        {"entries": [{"key": "team_usd", "value": "apiKey.team"}], "type": "usd",
                         "required": False},
                    ],
                },
            },
            "models": [{"name": "*", "provider": "openAI", "params": {"apiKey": "sk-up", "baseUrl": mock_url}}],
        },
    }


def chat(url: str, key: str, model: str = MODEL, **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 40, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=15)


def budgets(url: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{url}/v1/budget", headers=headers, timeout=5)


def micros(dollars: str) -> int:
    whole, _, part = dollars.partition(".")
    return int(whole) * 1_000_000 + int(part.ljust(6, "0"))


def cost_metric_micros(admin: str, user: str) -> float:
    prefix = "tollgate_gen_ai_client_cost_usd_total{"
    total = 0.0
    for line in httpx.get(f"{admin}/metrics", timeout=5).text.splitlines():
        if line.startswith(prefix) and f'user_id="{user}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total * 1_000_000


def next_month_utc(now: datetime) -> datetime:
    return datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("budgets"))
    try:
        s.start_redis()
        s.start_ratelimit(domain())
        mock = s.start_mock("--completion-tokens", "40")
        for _ in range(3):
            s.start_gateway(gateway_config(s, mock))
        yield s
    finally:
        s.stop()


def test_a_hard_dollar_budget_is_never_exceeded_across_replicas(stack):
    """150 requests, 24 at a time, round-robin over three replicas, a third of them
    streamed: the budget of $0.02 covers about 40. Charged: at most the budget, and
    exactly the mock's billed tokens at the catalog's prices."""
    billed_before = stack.mock_billed()
    answers: list[httpx.Response] = []
    lock = threading.Lock()
    todo = iter(range(150))

    def worker() -> None:
        for i in todo:  # the iterator is shared: each request is sent once
            gw = stack.gateways[i % 3]
            r = chat(gw.url, "sk-spender", stream=(i % 3 == 0))
            with lock:
                answers.append(r)

    threads = [threading.Thread(target=worker) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    billed = {k: v - billed_before[k] for k, v in stack.mock_billed().items()}
    served = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(served) + len(refused) == 150, sorted({r.status_code for r in answers})
    assert served and refused
    assert billed["requests"] == len(served)

    budget = stack.budget("budgets", ("user_usd", "spender"))
    spent = int(budget["spent"])
    assert spent == billed["prompt_tokens"] * PRICE_IN + billed["completion_tokens"] * PRICE_OUT
    assert spent <= micros(SPENDER_USD), f"charged {spent} micro-dollars against a budget of {SPENDER_USD}"
    # The cost metric, summed over the replicas, says the same to the micro-dollar.
    metric = sum(cost_metric_micros(gw.admin, "spender") for gw in stack.gateways)
    assert abs(metric - spent) < 0.5, (metric, spent)

    # A refusal says which budget ran out and when it starts again: the 1st of next month.
    body = refused[-1].json()["error"]["message"]
    boundary = next_month_utc(datetime.now(timezone.utc))
    assert "monthly USD budget for user_usd=spender exhausted" in body, body
    assert f"resets {boundary:%Y-%m-%dT%H:%M:%SZ}" in body, body
    retry_after = int(refused[-1].headers["retry-after"])
    assert abs(retry_after - (boundary - datetime.now(timezone.utc)).total_seconds()) < 5


def test_a_success_shows_the_dollars_left_after_its_reservation(stack):
    gw = stack.gateways[0]
    before = micros(next(b for b in budgets(gw.url, "sk-solo").json()["budgets"]
                         if b["descriptor"] == "user_usd=solo")["remaining"])
    r = chat(gw.url, "sk-solo")
    assert r.status_code == 200, r.text
    left = micros(r.headers["x-ratelimit-remaining-usd"])
    # Reserved: the prompt's upper bound and 40 output tokens, at the catalog's prices.
    assert before - left >= 40 * PRICE_OUT, (before, left)
    assert before - left < 40 * PRICE_OUT + 1000 * PRICE_IN
    usage = r.json()["usage"]
    after = micros(next(b for b in budgets(gw.url, "sk-solo").json()["budgets"]
                        if b["descriptor"] == "user_usd=solo")["remaining"])
    assert before - after == usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT
    # The token budget is soft: it reserves nothing, so the balance is the one it admitted on.
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == 1_000_000


def test_an_unpriced_model_under_a_dollar_budget_is_refused_not_served_free(stack):
    billed_before = stack.mock_billed()["requests"]
    r = chat(stack.gateways[1].url, "sk-solo", model="house-model-7b")
    assert r.status_code == 403, r.text
    assert "house-model-7b" in r.json()["error"]["message"]
    assert stack.mock_billed()["requests"] == billed_before  # never reached the provider


def test_two_keys_of_a_team_see_its_shared_budget_and_only_their_own(stack):
    gw_a, gw_b = stack.gateways[0], stack.gateways[2]
    r = chat(gw_a.url, "sk-alice")
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    cost = usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT

    alice = {b["descriptor"]: b for b in budgets(gw_b.url, "sk-alice").json()["budgets"]}
    bob = {b["descriptor"]: b for b in budgets(gw_a.url, "sk-bob").json()["budgets"]}
    assert set(alice) == {"user_id=alice", "user_usd=alice", "team_usd=research"}
    assert set(bob) == {"user_id=bob", "user_usd=bob", "team_usd=research"}  # not alice's own
    assert alice["team_usd=research"] == bob["team_usd=research"]
    team = bob["team_usd=research"]
    assert (team["unit"], team["period"], team["limit"]) == ("usd", "month", "500.000000")
    assert micros(team["spent"]) == cost and micros(alice["user_usd=alice"]["spent"]) == cost
    assert bob["user_usd=bob"]["spent"] == "0.000000" and bob["user_id=bob"]["spent"] == 0
    assert alice["user_id=alice"]["spent"] == usage["total_tokens"]
    assert team["resetsAt"] == f"{next_month_utc(datetime.now(timezone.utc)):%Y-%m-%dT%H:%M:%SZ}"

    # Reading charges nothing and changes nothing, however often.
    for _ in range(5):
        assert budgets(gw_a.url, "sk-bob").json()["budgets"] == list(bob.values())
    solo = {b["descriptor"] for b in budgets(gw_a.url, "sk-solo").json()["budgets"]}
    assert solo == {"user_id=solo", "user_usd=solo"}  # no team, no team budget


def test_the_budget_view_needs_a_valid_key(stack):
    url = stack.gateways[0].url
    for key in (None, "sk-not-a-key"):
        r = budgets(url, key)
        assert r.status_code == 401, r.text
        assert "budgets" not in r.json()


def test_a_calendar_day_starts_again_at_local_midnight_in_its_timezone(tmp_path):
    """Asia/Tokyo, UTC+9: the service's clock is moved to a few seconds before Tokyo's
    midnight, mike spends his 100 tokens, is refused until midnight, then served."""
    tz = ZoneInfo("Asia/Tokyo")
    stack = Stack(tmp_path)
    try:
        stack.start_redis()
        now = datetime.now(tz)
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tz)
        lead = 12.0  # seconds of the old day left once the service has started
        offset = (midnight - now).total_seconds() - lead
        stack.start_ratelimit(domain([{"key": "user_id", "value": "mike", "rate_limit": {
            "unit": "day", "requests_per_unit": 100, "timezone": "Asia/Tokyo"}}]),
            env={"TOLLGATE_CLOCK_OFFSET": str(offset)})
        mock = stack.start_mock("--completion-tokens", "120")
        gw = stack.start_gateway(gateway_config(stack, mock, {"sk-mike": {"user_id": "mike"}}))

        assert chat(gw.url, "sk-mike", max_tokens=200).status_code == 200  # 120+ tokens: the day is spent
        refused = chat(gw.url, "sk-mike")
        assert refused.status_code == 429, refused.text
        utc_midnight = midnight.astimezone(timezone.utc)
        assert utc_midnight.hour == 15  # Tokyo's midnight, as UTC
        message = refused.json()["error"]["message"]
        assert f"daily token budget for user_id=mike exhausted; resets {utc_midnight:%Y-%m-%dT%H:%M:%SZ}" in message
        assert 0 < int(refused.headers["retry-after"]) <= lead + 1
        assert 0 < int(refused.headers["x-ratelimit-reset"]) <= lead + 1  # the next start, not a refill

        started = time.monotonic()
        while (r := chat(gw.url, "sk-mike")).status_code == 429:
            assert time.monotonic() - started < lead + 5, "the day never started again"
            time.sleep(0.25)
        assert r.status_code == 200, r.text
        mike = {b["descriptor"]: b for b in budgets(gw.url, "sk-mike").json()["budgets"]}["user_id=mike"]
        assert mike["resetsAt"] == f"{utc_midnight + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"
        assert mike["spent"] == r.json()["usage"]["total_tokens"]  # only today's request
    finally:
        stack.stop()


def test_llm_cost_prices_cost_expressions_and_metric_fields(tmp_path):
    """`llm.cost` is the call's cost in USD at the catalog's prices: a `cost` expression
    built on it charges exactly that arithmetic, and a metric field sees it too."""
    stack = Stack(tmp_path)
    try:
        stack.start_redis()
        stack.start_ratelimit(yaml.safe_dump({"domain": "budgets", "descriptors": [
            {"key": key, "rate_limit": {"unit": "month", "usd": 50}} for key in ("user_usd", "doubled")]}))
        mock = stack.start_mock("--completion-tokens", "40")
        config = gateway_config(stack, mock)
        config["config"]["metrics"]["fields"]["add"]["priced"] = "has(llm.cost) && llm.cost > 0.0 ? 'yes' : 'no'"
        config["llm"]["policies"]["remoteRateLimit"]["descriptors"] = [
            {"entries": [{"key": "user_usd", "value": "apiKey.user_id"}], "type": "usd"},
            {"entries": [{"key": "doubled", "value": "apiKey.user_id"}], "type": "usd", "cost": "llm.cost * 2.0"},
        ]
        gw = stack.start_gateway(config)
        r = chat(gw.url, "sk-solo")
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        cost = usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT
        seen = {b["descriptor"]: micros(b["spent"]) for b in budgets(gw.url, "sk-solo").json()["budgets"]}
        assert seen == {"user_usd=solo": cost, "doubled=solo": 2 * cost}
        metrics = httpx.get(f"{gw.admin}/metrics", timeout=5).text
        assert any(line.startswith("tollgate_gen_ai_client_cost_usd_total{") and 'priced="yes"' in line
                   and 'user_id="solo"' in line for line in metrics.splitlines()), metrics
        assert round(cost_metric_micros(gw.admin, "solo")) == cost
    finally:
        stack.stop()
