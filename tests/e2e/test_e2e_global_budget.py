"""One budget across replicas: 3 gateways, one rate-limit service, one Redis."""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.harness.budgets import domain_yaml, gateway_config, remote_remaining
from tests.harness.stack import Stack

BUDGET = 2000
COMPLETION = 50
CONCURRENCY = 12


def make_stack(tmp_path, enforcement: str, replicas: int = 3, failure_mode: str = "failClosed") -> Stack:
    s = Stack(tmp_path)
    s.start_redis()
    s.start_mock("--completion-tokens", str(COMPLETION))
    s.start_ratelimit(domain_yaml(BUDGET))
    for _ in range(replicas):
        s.start_gateway(gateway_config(s, enforcement, failure_mode))
    return s


def chat(url: str, key: str, **extra) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Count to five."}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=10)


def spend_concurrently(stack: Stack, key: str, **extra) -> tuple[int, int, int]:
    """Hammers the budget from CONCURRENCY threads spread over the replicas.

    Returns (served tokens, largest single response, requests served)."""
    served, largest, count = 0, 0, 0
    lock = threading.Lock()

    def worker(i: int) -> None:
        nonlocal served, largest, count
        refused = 0
        with httpx.Client(timeout=10) as client:
            n = i
            # A hard budget is held whole by one in-flight request: retry a while before
            # concluding it is spent.
            while refused < 10:
                url = stack.gateways[n % len(stack.gateways)].url
                n += 1
                r = client.post(f"{url}/v1/chat/completions",
                                json={"model": "gpt-4o-mini",
                                      "messages": [{"role": "user", "content": "Count to five."}], **extra},
                                headers={"Authorization": f"Bearer {key}"})
                if r.status_code == 429:
                    refused += 1
                    time.sleep(0.02)
                    continue
                assert r.status_code == 200, r.text
                refused = 0
                total = r.json()["usage"]["total_tokens"]
                with lock:
                    served += total
                    largest = max(largest, total)
                    count += 1

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(worker, range(CONCURRENCY)))
    return served, largest, count


@pytest.fixture
def soft(tmp_path):
    s = make_stack(tmp_path, "soft")
    yield s
    s.stop()


@pytest.fixture
def hard(tmp_path):
    s = make_stack(tmp_path, "hard")
    yield s
    s.stop()


def test_default_mode_overshoot_is_bounded_by_in_flight_responses(soft):
    served, largest, count = spend_concurrently(soft, "sk-load-user")
    assert count > 10
    assert BUDGET <= served <= BUDGET + CONCURRENCY * largest
    time.sleep(0.3)  # the last settles land
    for gw in soft.gateways:
        r = chat(gw.url, "sk-load-user")
        assert r.status_code == 429 and "user_id=load" in r.json()["error"]["message"]
        assert chat(gw.url, "sk-other-user").status_code == 200


def test_hard_mode_never_exceeds_the_budget(hard):
    served, _, count = spend_concurrently(hard, "sk-load-user")
    assert count > 10
    assert served <= BUDGET
    served2, _, _ = spend_concurrently(hard, "sk-load-user", max_tokens=20)
    assert served + served2 <= BUDGET
    for gw in hard.gateways:
        assert chat(gw.url, "sk-load-user").status_code == 429
        assert chat(gw.url, "sk-other-user").status_code == 200


def test_hard_mode_caps_max_tokens_to_what_is_left(hard):
    r = chat(hard.gateways[0].url, "sk-load-user")
    assert r.status_code == 200
    (seen,) = [q for q in hard.mock_requests() if q["path"] == "/v1/chat/completions"][-1:]
    sent = seen["body"]
    cap = sent.get("max_completion_tokens") or sent.get("max_tokens")
    assert cap is not None and 0 < cap <= BUDGET


def test_limit_change_applies_live_without_resetting_spend(soft):
    served, _, _ = spend_concurrently(soft, "sk-load-user")
    assert chat(soft.gateways[1].url, "sk-load-user").status_code == 429
    raised = BUDGET * 3
    (soft.config_dir / "config.yaml").write_text(domain_yaml(raised))
    deadline = time.monotonic() + 2.0
    while True:
        r = chat(soft.gateways[2].url, "sk-load-user")
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 200, "the raised limit did not apply within 2 s"
    remaining = int(r.headers["x-ratelimit-remaining-tokens"])
    assert remaining <= raised - served  # what was spent before the change still counts


def test_ratelimit_service_down_fail_closed(soft):
    soft.ratelimit.stop()
    before = len(soft.mock_requests())
    r = chat(soft.gateways[0].url, "sk-other-user")
    assert 500 <= r.status_code < 600
    assert "rate limit service" in r.json()["error"]["message"]
    assert len(soft.mock_requests()) == before  # nothing went upstream


def test_ratelimit_service_down_fail_open(tmp_path):
    s = make_stack(tmp_path, "soft", replicas=1, failure_mode="failOpen")
    try:
        s.ratelimit.stop()
        r = chat(s.gateways[0].url, "sk-load-user")
        assert r.status_code == 200
        text = httpx.get(f"{s.gateways[0].admin}/metrics").text
        assert re.search(r'tollgate_ratelimit_service_failures_total\{[^}]*failure_mode="failOpen"[^}]*\} 1\.0', text)
    finally:
        s.stop()


def test_redis_restart_reloads_scripts(soft):
    assert chat(soft.gateways[0].url, "sk-other-user").status_code == 200
    soft.redis.stop()
    soft.start_redis()  # same port, empty script cache: the service sees NOSCRIPT
    for _ in range(20):
        r = chat(soft.gateways[0].url, "sk-other-user")
        if r.status_code == 200:
            break
        time.sleep(0.1)
    assert r.status_code == 200, r.text


def test_refused_requests_are_never_charged(tmp_path):
    s = Stack(tmp_path)
    try:
        s.start_redis()
        s.start_mock("--completion-tokens", str(COMPLETION))
        s.start_ratelimit(domain_yaml(100))
        config = gateway_config(s, "soft")
        config["llm"]["policies"]["localRateLimit"] = [
            {"maxTokens": 3, "tokensPerFill": 3, "fillInterval": "1h", "type": "requests"}]
        gw = s.start_gateway(config)

        assert chat(gw.url, "sk-load-user").status_code == 200  # local 3 -> 2, remote ~40 left
        assert chat(gw.url, "sk-load-user").status_code == 200  # local 2 -> 1, remote in debt
        refused = chat(gw.url, "sk-load-user")
        assert refused.status_code == 429 and "user_id=load" in refused.json()["error"]["message"]
        # The remote refusal handed back its local reservation: one request is left for other.
        assert chat(gw.url, "sk-other-user").status_code == 200  # local 1 -> 0
        # Raise load's remote limit so what is charged to it becomes visible, then let the
        # local bucket refuse: that refusal must not reach the global budget.
        (s.config_dir / "config.yaml").write_text(domain_yaml(10**6))
        deadline = time.monotonic() + 3
        while remote_remaining(s, "load") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = remote_remaining(s, "load")
        assert before > 10**6 - 200
        local = chat(gw.url, "sk-load-user")
        assert local.status_code == 429 and "localRateLimit" in local.json()["error"]["message"]
        assert remote_remaining(s, "load") >= before  # refill only; a charge would be ~60 tokens
    finally:
        s.stop()
