"""What a platform team runs: HTTPS listeners, the JSON access log, demo keys refused."""

import json
import ssl
import time

import httpx
import pytest
import yaml

from tests.harness.procs import Proc, free_port, python_cmd, start_gateway, start_mock_llm
from tests.harness.tls import make_pki

KEY = "sk-operations-test"
UPSTREAM_KEY = "sk-upstream-operations-secret"
HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def mock():
    proc, url = start_mock_llm(None, "--require-key", UPSTREAM_KEY)
    yield url
    proc.stop()


def write(path, config) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_binds_listener_serves_https_verified_against_its_ca(tmp_path, mock):
    pki = make_pki(tmp_path)
    port, admin = free_port(), free_port()
    config = {"config": {"adminAddr": f"127.0.0.1:{admin}"},
              "binds": [{"port": port, "listeners": [{
                  "name": "https", "protocol": "HTTPS", "tls": {"cert": pki.cert.name, "key": pki.key.name},
                  "routes": [{"policies": {"apiKey": {"keys": [{"key": KEY}]}, "backendAuth": {"key": UPSTREAM_KEY}},
                              "backends": [{"ai": {"name": "m", "provider": {"openAI": {}}, "baseUrl": mock}}]}]}]}]}
    write(tmp_path / "config.yaml", config)
    gw = start_gateway(tmp_path / "config.yaml", port, admin)
    try:
        url = f"https://localhost:{port}/v1/chat/completions"
        r = httpx.post(url, json=HELLO, headers={"authorization": f"Bearer {KEY}"}, verify=ssl.create_default_context(cafile=str(pki.ca)), timeout=10)
        assert r.status_code == 200 and r.json()["usage"]["total_tokens"] > 0
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port is no answer
            httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=HELLO, timeout=5)
    finally:
        gw.stop()


def test_llm_form_serves_https_with_llm_tls(tmp_path, mock):
    pki = make_pki(tmp_path)
    port, admin = free_port(), free_port()
    config = {"config": {"adminAddr": f"127.0.0.1:{admin}"},
              "llm": {"port": port, "tls": {"cert": str(pki.cert), "key": str(pki.key)},
                      "models": [{"name": "*", "provider": "openAI",
                                  "params": {"apiKey": UPSTREAM_KEY, "baseUrl": mock}}]}}
    write(tmp_path / "config.yaml", config)
    gw = start_gateway(tmp_path / "config.yaml", port, admin)
    try:
        r = httpx.post(f"https://127.0.0.1:{port}/v1/chat/completions", json=HELLO, verify=ssl.create_default_context(cafile=str(pki.ca)), timeout=10)
        assert r.status_code == 200
    finally:
        gw.stop()


def access_lines(gw, count: int) -> list[dict]:
    """The last `count` JSON lines of the gateway's stderr, waiting for them a little."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in gw.proc.log().splitlines() if line.startswith("{")]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines[-count:]
        time.sleep(0.05)


def test_every_request_is_one_json_access_line_without_the_key(tmp_path, mock):
    port, admin = free_port(), free_port()
    models = [{"name": "gpt-4o-mini", "provider": "openAI", "params": {"apiKey": UPSTREAM_KEY, "baseUrl": mock}},
              {"name": "broken", "provider": "openAI", "params": {"apiKey": "sk-wrong-upstream", "baseUrl": mock}}]
    config = {"config": {"adminAddr": f"127.0.0.1:{admin}",
                         "modelCatalog": {"gpt-4o-mini": {"input": 1, "output": 2}},
                         "logging": {"fields": {"add": {"user": "apiKey.user_id", "code": "response.code"},
                                                "remove": ["method"]}}},
              "llm": {"port": port, "models": models,
                      "policies": {"apiKey": {"keys": [{"key": KEY, "metadata": {"user_id": "alice"}}]}}}}
    write(tmp_path / "config.yaml", config)
    gw = start_gateway(tmp_path / "config.yaml", port, admin)
    try:
        auth = {"authorization": f"Bearer {KEY}"}
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=HELLO, headers=auth).status_code == 200
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=HELLO,
                          headers={"authorization": "Bearer sk-nope"}).status_code == 401
        assert httpx.post(f"{gw.url}/v1/chat/completions", json={**HELLO, "model": "broken"},
                          headers=auth).status_code == 502
        ok, refused, upstream_auth = access_lines(gw, 3)
        assert ok["status"] == 200 and ok["reason"] == "ok" and ok["route"] == "llm"
        assert ok["model"] == "gpt-4o-mini" and ok["upstream_status"] == 200
        assert ok["input_tokens"] > 0 and ok["output_tokens"] > 0 and ok["cost_usd"] > 0
        assert ok["key_metadata"] == {"user_id": "alice"} and len(ok["key_id"]) == 12
        assert ok["user"] == "alice" and ok["code"] == 200 and "method" not in ok
        assert ok["latency_ms"] > 0 and ok["time"].endswith("Z")
        assert refused["status"] == 401 and refused["key_id"] is None and refused["code"] == 401
        assert upstream_auth["status"] == 502 and upstream_auth["upstream_status"] == 401
        log = gw.proc.log()
        assert "backend 'broken' (openAI) rejected the gateway's upstream credentials" in log
        for secret in (KEY, UPSTREAM_KEY, "sk-nope", "sk-wrong-upstream"):
            assert secret not in log
        # Lines are written in batches; a stop right after a request still writes its line.
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=HELLO, headers=auth).status_code == 200
        assert gw.stop() == 0
        assert len([line for line in gw.proc.log().splitlines() if line.startswith("{")]) == 4
    finally:
        gw.stop()


def test_the_access_log_filter_selects_requests(tmp_path, mock):
    port, admin = free_port(), free_port()
    config = {"config": {"adminAddr": f"127.0.0.1:{admin}", "logging": {"filter": "response.code >= 400"}},
              "llm": {"port": port, "models": [{"name": "*", "provider": "openAI",
                                                "params": {"apiKey": UPSTREAM_KEY, "baseUrl": mock}}]}}
    write(tmp_path / "config.yaml", config)
    gw = start_gateway(tmp_path / "config.yaml", port, admin)
    try:
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=HELLO).status_code == 200
        assert httpx.post(f"{gw.url}/v1/chat/completions", content=b"{").status_code == 400
        assert httpx.get(f"{gw.url}/nowhere").status_code == 404
        time.sleep(0.2)
        assert [line["status"] for line in access_lines(gw, 10)] == [400, 404]
    finally:
        gw.stop()


def test_published_demo_keys_refuse_to_start_when_asked(tmp_path):
    """deploy/compose/real-providers.yml sets TOLLGATE_REFUSE_DEMO_KEYS=1."""
    port, admin = free_port(), free_port()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "alice").write_text('{"key": "sk-alice-abc123def456", "metadata": {"user_id": "alice"}}')
    config = {"config": {"adminAddr": f"127.0.0.1:{admin}"},
              "llm": {"port": port, "policies": {"apiKey": {"keysDir": str(keys)}},
                      "models": [{"name": "*", "provider": "openAI"}]}}
    write(tmp_path / "config.yaml", config)
    proc = Proc("gateway-demo-keys", python_cmd("gateway", "-f", str(tmp_path / "config.yaml")),
                env={"TOLLGATE_REFUSE_DEMO_KEYS": "1"}).start()
    assert proc.popen.wait(30) == 2
    assert f"{keys / 'alice'}:1: this is one of the published demo keys" in proc.log()
    assert "sk-alice-abc123def456" not in proc.log()
    gw = start_gateway(tmp_path / "config.yaml", port, admin)  # without the flag the demo still runs
    gw.stop()
