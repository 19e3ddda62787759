"""Seed 000: agentgateway's "Virtual key management" walkthrough, end to end.

Each config is the page's own, verbatim, with two additions a test needs: the mock
upstream's URL (`baseUrl`, the walkthrough's only real change) and free ports instead
of 4000/15000 so that runs can sit side by side.
"""

import re
import time

import httpx
import pytest
import yaml

from tests.harness.procs import free_port, start_gateway, start_mock_llm

UPSTREAM_KEY = "sk-upstream-SECRET-0123456789"
ALICE = "sk-alice-abc123def456"
BOB = "sk-bob-xyz789uvw012"

STEP1 = """
llm:
  policies:
    apiKey:
      mode: strict
      keys:
      - key: sk-alice-abc123def456
        metadata:
          user: alice
      - key: sk-bob-xyz789uvw012
        metadata:
          user: bob
  models:
  - name: "*"
    provider: openAI
    params:
      apiKey: "$OPENAI_API_KEY"
"""

BUDGET = """
    localRateLimit:
    - maxTokens: 10
      tokensPerFill: 1
      fillInterval: 60s
      type: tokens
"""

GLOBAL = """
binds:
- port: 4000
  listeners:
  - routes:
    - backends:
      - ai:
          name: openai
          provider:
            openAI:
              model: gpt-3.5-turbo
      policies:
        apiKey:
          mode: strict
          keys:
          - key: sk-alice-abc123def456
            metadata:
              user: alice
          - key: sk-bob-xyz789uvw012
            metadata:
              user: bob
        backendAuth:
          key: "$OPENAI_API_KEY"
        localRateLimit:
        - maxTokens: 100000
          tokensPerFill: 100000
          fillInterval: 86400s
          type: tokens
"""


def llm_config(base: str, upstream: str, port: int, admin_port: int, tokenize: bool = False) -> str:
    doc = yaml.safe_load(base)
    doc["llm"]["port"] = port
    params = doc["llm"]["models"][0]["params"]
    params["baseUrl"] = upstream
    if tokenize:
        params["tokenize"] = True
    doc["config"] = {"adminAddr": f"127.0.0.1:{admin_port}"}
    return yaml.safe_dump(doc, sort_keys=False)


def chat(url: str, key: str | None, content: str = "Hello!", **extra) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def mock():
    proc, url = start_mock_llm(None, "--completion-tokens", "248", "--require-key", UPSTREAM_KEY)
    yield url
    proc.stop()


@pytest.fixture
def gateway(tmp_path, mock):
    started = []

    def start(text: str):
        port, admin_port = free_port(), free_port()
        path = tmp_path / "config.yaml"
        path.write_text(llm_config(text, mock, port, admin_port) if text.lstrip().startswith("llm") else text)
        gw = start_gateway(path, port, admin_port, env={"OPENAI_API_KEY": UPSTREAM_KEY})
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def upstream_requests(mock: str) -> list[dict]:
    return httpx.get(f"{mock}/_mock/requests").json()["requests"]


def test_step1_virtual_keys_authenticate(gateway, mock):
    gw = gateway(STEP1)
    ok = chat(gw.url, ALICE)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert chat(gw.url, BOB).status_code == 200

    bad = chat(gw.url, "invalid-key")
    assert bad.status_code == 401
    assert "key" in bad.json()["error"]["message"].lower()
    assert chat(gw.url, None).status_code == 401


def test_step2_token_budget_second_request_429(gateway, mock):
    gw = gateway(STEP1.replace("  models:", BUDGET.rstrip("\n") + "\n  models:", 1))
    first = chat(gw.url, ALICE, "Tell me a short story")
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["completion_tokens"] == 248  # crosses the 10-token budget, still served
    second = chat(gw.url, ALICE, "Tell me a short story")
    assert second.status_code == 429
    assert "rate limit" in second.json()["error"]["message"]
    assert int(second.headers["retry-after"]) >= 1
    assert second.headers["x-ratelimit-limit"] == "10"
    assert second.headers["x-ratelimit-remaining"] == "0"
    # localRateLimit is gateway-wide, not per key (as the page says): bob is refused too.
    assert chat(gw.url, BOB).status_code == 429


def test_step3_tokenize_refuses_before_upstream(gateway, mock):
    gw = gateway(STEP1.replace("  models:", BUDGET.rstrip("\n") + "\n  models:", 1))
    gw.stop()
    text = gw.config_path.read_text()
    doc = yaml.safe_load(text)
    doc["llm"]["models"][0]["params"]["tokenize"] = True
    gw.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    port = doc["llm"]["port"]
    admin_port = int(doc["config"]["adminAddr"].rsplit(":", 1)[1])
    gw = start_gateway(gw.config_path, port, admin_port, env={"OPENAI_API_KEY": UPSTREAM_KEY})
    try:
        httpx.delete(f"{mock}/_mock/requests")
        long_prompt = "Tell me a long story about the sea and the mountains and the stars " * 3
        refused = chat(gw.url, ALICE, long_prompt)
        assert refused.status_code == 429, refused.text
        assert upstream_requests(mock) == []  # refused up front: the upstream never saw it
        small = chat(gw.url, ALICE, "Hello!")  # a one-word prompt estimates under 10
        assert small.status_code == 200, small.text
        assert len(upstream_requests(mock)) == 1
        assert chat(gw.url, ALICE, "Hello!").status_code == 429  # 248 completion tokens went into debt
    finally:
        gw.stop()


def test_global_budget_binds_form(gateway, mock, tmp_path):
    port, admin_port = free_port(), free_port()
    doc = yaml.safe_load(GLOBAL)
    doc["binds"][0]["port"] = port
    backend = doc["binds"][0]["listeners"][0]["routes"][0]["backends"][0]["ai"]
    backend["hostOverride"] = mock.removeprefix("http://")
    doc["binds"][0]["listeners"][0]["routes"][0]["policies"]["localRateLimit"][0]["maxTokens"] = 200
    doc["config"] = {"adminAddr": f"127.0.0.1:{admin_port}"}
    path = tmp_path / "global.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    gw = start_gateway(path, port, admin_port, env={"OPENAI_API_KEY": UPSTREAM_KEY})
    try:
        assert chat(gw.url, ALICE).status_code == 200
        # One shared budget for every key: alice's usage leaves bob nothing.
        assert chat(gw.url, BOB).status_code == 429
        assert chat(gw.url, "sk-nobody").status_code == 401
    finally:
        gw.stop()


def test_metrics_report_spend_per_token_type(gateway, mock):
    gw = gateway(STEP1)
    usage = chat(gw.url, ALICE).json()["usage"]
    text = httpx.get(f"{gw.admin}/metrics").text
    sums = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'tollgate_gen_ai_client_token_usage_sum\{[^}]*gen_ai_token_type="(\w+)"[^}]*\} ([0-9.e+]+)', text)}
    assert sums == {"input": usage["prompt_tokens"], "output": usage["completion_tokens"]}
    assert re.search(r'tollgate_requests_total\{[^}]*status="200"[^}]*\} 1\.0', text)


def test_secrets_stay_on_their_side(gateway, mock):
    gw = gateway(STEP1)
    httpx.delete(f"{mock}/_mock/requests")
    resp = chat(gw.url, ALICE)
    assert resp.status_code == 200
    seen = upstream_requests(mock)
    assert len(seen) == 1
    upstream_view = repr(seen[0])
    assert ALICE not in upstream_view  # the virtual key never reaches the upstream
    assert seen[0]["headers"].get("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert UPSTREAM_KEY not in resp.text and UPSTREAM_KEY not in repr(dict(resp.headers))
    chat(gw.url, "invalid-key")
    assert UPSTREAM_KEY not in httpx.get(f"{gw.admin}/metrics").text
    time.sleep(0.2)
    log = gw.proc.log()
    assert UPSTREAM_KEY not in log and ALICE not in log


def test_upstream_rejecting_the_gateway_key_is_a_502_without_its_body(tmp_path, mock):
    port, admin_port = free_port(), free_port()
    path = tmp_path / "wrong-upstream-key.yaml"
    path.write_text(llm_config(STEP1, mock, port, admin_port))
    gw = start_gateway(path, port, admin_port, env={"OPENAI_API_KEY": "sk-wrong-upstream-key"})
    try:
        r = chat(gw.url, ALICE)
        assert r.status_code == 502
        assert "upstream" in r.json()["error"]["message"] and "sk-wrong" not in r.text
    finally:
        gw.stop()
