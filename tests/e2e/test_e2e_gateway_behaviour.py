"""Status codes, streaming accounting, reload and shutdown of one real gateway."""

import json
import math
import re
import signal
import socket
import time
from decimal import Decimal

import httpx
import pytest
import yaml

from tests.harness.procs import free_port, start_gateway, start_mock_llm
from tests.harness.stack import write_keys_dir

KEY = "sk-behaviour-key"
NARROW = "sk-narrow-key"


def config(mock_url: str, port: int, admin_port: int, keys_dir=None, catalog=None, **policies) -> dict:
    api_key = {"keys": [{"key": KEY, "metadata": {"user_id": "u1"}},
                        {"key": NARROW, "allowedModels": ["gpt-4o-mini"]}]}
    if keys_dir:
        api_key["keysDir"] = str(keys_dir)
    return {
        "llm": {"port": port, "policies": {"apiKey": api_key, **policies},
                "models": [{"name": "gpt-4o-mini", "provider": "openAI", "params": {"apiKey": "k", "baseUrl": mock_url}},
                           {"name": "gpt-4o", "provider": "openAI", "params": {"apiKey": "k", "baseUrl": mock_url}},
                           {"name": "gpt-*", "provider": "openAI", "params": {"apiKey": "k", "baseUrl": mock_url}}]},
        "config": {"adminAddr": f"127.0.0.1:{admin_port}", "maxBodySize": 4096,
                   "metrics": {"fields": {"add": {"user_id": "apiKey.user_id"}}},
                   **({"modelCatalog": catalog} if catalog else {})},
    }


@pytest.fixture(scope="module")
def mock():
    proc, url = start_mock_llm(None, "--completion-tokens", "40", "--chunks", "8", "--chunk-delay-ms", "50")
    yield url
    proc.stop()


@pytest.fixture
def run(tmp_path, mock):
    started = []

    def start(mock_url=None, **kw):
        port, admin_port = free_port(), free_port()
        path = tmp_path / f"config-{port}.yaml"
        path.write_text(yaml.safe_dump(config(mock_url or mock, port, admin_port, **kw)))
        gw = start_gateway(path, port, admin_port)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def post(gw, key=KEY, body=None, raw=None, **kw):
    body = body or {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{gw.url}/v1/chat/completions", content=raw if raw is not None else json.dumps(body),
                      headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
                      timeout=10, **kw)


def test_malformed_requests_are_400_naming_the_problem(run):
    gw = run()
    r = post(gw, raw=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = post(gw, raw=b"[1, 2]")
    assert r.status_code == 400 and "object" in r.json()["error"]["message"]
    r = post(gw, body={"model": "gpt-4o-mini"})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def test_oversized_body_is_413(run):
    gw = run()
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = post(gw, body=big)
    assert r.status_code == 413
    assert "4096" in r.json()["error"]["message"]


def test_allowed_models_403_and_models_list(run):
    gw = run()
    r = post(gw, NARROW, body={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 403 and "gpt-4o" in r.json()["error"]["message"]
    assert post(gw, NARROW).status_code == 200
    listed = lambda key: [m["id"] for m in httpx.get(  # noqa: E731
        f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]]
    # gpt-* lists the provider's gpt models it would serve: gpt-4o-mini has its own entry.
    assert listed(KEY) == ["gpt-3.5-turbo", "gpt-4o", "gpt-4o-mini"]
    assert listed(NARROW) == ["gpt-4o-mini"]
    assert httpx.get(f"{gw.url}/v1/models").status_code == 401


def test_models_list_asks_the_provider_once_with_the_gateways_key(run, mock):
    httpx.delete(f"{mock}/_mock/requests")
    gw = run()
    for _ in range(3):
        listed = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert listed.status_code == 200 and "gpt-3.5-turbo" in listed.text
    asks = [r for r in httpx.get(f"{mock}/_mock/requests").json()["requests"] if r["path"] == "/v1/models"]
    assert len(asks) == 1, asks  # kept for ten minutes
    assert asks[0]["headers"].get("authorization") == "Bearer k"  # the backend's key, never the caller's


def test_models_list_survives_a_provider_that_cannot_list(run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    gw = run(mock_url=dead)
    listed = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=15)
    assert listed.status_code == 200
    assert [m["id"] for m in listed.json()["data"]] == ["gpt-4o", "gpt-4o-mini"]  # the exact names still


def test_models_list_on_binds_routes_names_models_not_backends(tmp_path, mock):
    """A binds-form `ai.name` is a label: a route lists its fixed model, or the provider's list."""
    port, admin_port = free_port(), free_port()
    route = lambda prefix, ai: {  # noqa: E731
        "matches": [{"path": {"pathPrefix": prefix}}], "backends": [{"ai": {**ai, "baseUrl": mock}}],
        "policies": {"apiKey": {"keys": [{"key": KEY}]}, "backendAuth": {"key": "k"}}}
    config = {"config": {"adminAddr": f"127.0.0.1:{admin_port}"},
              "binds": [{"port": port, "listeners": [{"routes": [
                  route("/fixed", {"name": "openai", "provider": {"openAI": {"model": "gpt-4o-mini"}}}),
                  route("/open", {"name": "claude", "provider": {"anthropic": {}}})]}]}]}
    path = tmp_path / "binds.yaml"
    path.write_text(yaml.safe_dump(config))
    gw = start_gateway(path, port, admin_port)
    try:
        listed = lambda prefix: [m["id"] for m in httpx.get(  # noqa: E731
            f"{gw.url}{prefix}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=15).json()["data"]]
        assert listed("/fixed") == ["gpt-4o-mini"]
        assert listed("/open") == ["claude-sonnet-4-5", "gpt-3.5-turbo", "gpt-4o-mini"]  # the mock's own list
        answer = httpx.post(f"{gw.url}/fixed/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        assert answer.status_code == 200 and answer.json()["model"] == "gpt-4o-mini"
    finally:
        gw.stop()


def test_upstream_unreachable_502_and_timeout_504(run, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
    r = post(run(mock_url=dead))
    assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]

    slow, slow_url = start_mock_llm(None, "--delay-ms", "3000")
    try:
        gw = run(mock_url=slow_url, timeout={"requestTimeout": "300ms"})
        started = time.monotonic()
        r = post(gw)
        assert r.status_code == 504, r.text
        assert time.monotonic() - started < 2.5
    finally:
        slow.stop()


def token_sums(gw) -> dict[str, float]:
    text = httpx.get(f"{gw.admin}/metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'tollgate_gen_ai_client_token_usage_sum\{[^}]*gen_ai_token_type="(\w+)"[^}]*\} ([0-9.e+]+)', text)}


def test_stream_relayed_as_it_arrives_and_abandoned_stream_still_charged(run):
    gw = run(localRateLimit=[{"maxTokens": 45, "tokensPerFill": 1, "fillInterval": "1h", "type": "tokens"}])
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as r:
        assert r.status_code == 200
        started = time.monotonic()
        first = next(r.iter_raw())
        assert time.monotonic() - started < 0.3  # not buffered until the 400 ms stream ends
        assert first.startswith(b"data: ")
    # The client left after one chunk; the gateway drains the upstream for its usage.
    deadline = time.monotonic() + 5
    while token_sums(gw).get("output") != 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert token_sums(gw).get("output") == 40
    r = post(gw)
    assert r.status_code == 429  # the abandoned stream's 40+ tokens went against the 45 budget


def test_config_and_keys_dir_reload_without_restart(run, tmp_path):
    keys = write_keys_dir(tmp_path / "keys", {"k1": {"key": "sk-from-dir-1", "metadata": {"user_id": "d1"}}})
    gw = run(keys_dir=keys)
    assert post(gw, "sk-from-dir-1").status_code == 200
    assert post(gw, "sk-from-dir-2").status_code == 401
    # A Secret update: a new ..data directory swapped in atomically.
    new = keys / "..2026_11_22_01_00_00.000000002"
    new.mkdir()
    (new / "k2").write_text(json.dumps({"key": "sk-from-dir-2", "metadata": {"user_id": "d2"}}))
    (keys / "..data_tmp").symlink_to(new.name)
    (keys / "..data_tmp").rename(keys / "..data")
    (keys / "k2").symlink_to("..data/k2")
    deadline = time.monotonic() + 3
    while post(gw, "sk-from-dir-2").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert post(gw, "sk-from-dir-2").status_code == 200
    assert post(gw, "sk-from-dir-1").status_code == 401  # k1 left with the old ..data

    good = gw.config_path.read_text()
    gw.config_path.write_text(good.replace("keys:", "keyz:", 1))
    deadline = time.monotonic() + 3
    while "keyz" not in gw.proc.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert re.search(r"config-\d+\.yaml:\d+: .*keyz", gw.proc.log())
    assert post(gw, "sk-from-dir-2").status_code == 200  # the last good config still serves


def test_graceful_shutdown_finishes_in_flight_streams(run):
    gw = run()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as r:
        stream = r.iter_raw()
        chunks = [next(stream)]
        gw.proc.signal(signal.SIGTERM)
        chunks += list(stream)
    text = b"".join(chunks).decode()
    assert text.rstrip().endswith("data: [DONE]")
    assert '"completion_tokens":40' in text.replace(" ", "")
    assert gw.proc.popen.wait(10) == 0


def test_spend_in_usd_per_key_from_the_model_catalog(run):
    gw = run(catalog={"gpt-4o-mini": {"input": 0.15, "output": 0.60}})
    usage = post(gw).json()["usage"]
    post(gw, NARROW)  # a key without user_id metadata: its own (empty) label
    text = httpx.get(f"{gw.admin}/metrics").text
    costs = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'tollgate_gen_ai_client_cost_usd_total\{[^}]*user_id="(\w*)"[^}]*\} ([0-9.e+-]+)', text)}
    # Whole micro-dollars, rounded up once per call: the figure a dollar budget is charged.
    micros = math.ceil(usage["prompt_tokens"] * Decimal("0.15") + usage["completion_tokens"] * Decimal("0.6"))
    assert costs["u1"] == costs[""] == micros / 1e6
    assert re.search(r'tollgate_gen_ai_client_token_usage_sum\{[^}]*gen_ai_token_type="output"[^}]*user_id="u1"', text)
