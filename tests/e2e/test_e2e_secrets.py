"""The upstream key never reaches a client: every error path, both dialects, both providers,
streaming and not, against a mock upstream whose errors quote the key it was sent. Nor
does a `$VAR`'s value reach a config error, in `tollgate validate` or a reload's log."""

import json
import os
import subprocess
import time

import httpx
import pytest
import yaml

from tests.harness.deploy_stack import script_command
from tests.harness.procs import free_port, start_gateway, start_mock_llm

UPSTREAM_KEY = "sk-upstream-leakcheck-7f3a9c2e5b1d"
CLIENT_KEY = "sk-client-secrets-test"
STATUSES = [401, 400, 404, 429, 500, 503]
# (route prefix, client path): OpenAI relayed, OpenAI -> Anthropic translated, Anthropic relayed.
PATHS = [("/oa", "/v1/chat/completions"), ("/an", "/v1/chat/completions"), ("/an", "/v1/messages")]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    mock, mock_url = start_mock_llm(None, "--echo-key")
    port, admin = free_port(), free_port()
    route = lambda prefix, provider: {  # noqa: E731
        "name": prefix.strip("/"), "matches": [prefix],
        "backends": [{"ai": {"name": provider, "provider": {provider: {}}, "baseUrl": mock_url}}],
        "policies": {"apiKey": {"keys": [{"key": CLIENT_KEY}]}, "backendAuth": {"key": "$UPSTREAM_KEY"}}}
    config = {"config": {"adminAddr": f"127.0.0.1:{admin}"},
              "binds": [{"port": port, "listeners": [{"routes": [route("/oa", "openAI"), route("/an", "anthropic")]}]}]}
    path = tmp_path_factory.mktemp("secrets") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    gw = start_gateway(path, port, admin, env={"UPSTREAM_KEY": UPSTREAM_KEY})
    yield gw, mock_url
    gw.stop()
    mock.stop()


def call(gw, prefix: str, path: str, model: str, stream: bool) -> httpx.Response:
    body = {"model": model, "max_tokens": 16, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "anthropic-version": "2023-06-01"}
    return httpx.post(f"{gw.url}{prefix}{path}", json=body, headers=headers, timeout=10)


def client_visible(r: httpx.Response) -> str:
    """Everything the client receives: status line, headers, body (SSE events included)."""
    head = f"HTTP/1.1 {r.status_code} {r.reason_phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in r.headers.items())
    return head + r.content.decode("utf-8", "replace")


def assert_no_key(text: str) -> None:
    for fragment in (UPSTREAM_KEY, UPSTREAM_KEY[3:], UPSTREAM_KEY[-12:]):
        assert fragment not in text, text


def test_the_mock_does_leak_the_key_in_its_errors(gateway):
    """The reproduction holds: asked directly, the mock's error quotes the credential."""
    _, mock_url = gateway
    r = httpx.post(f"{mock_url}/v1/chat/completions", headers={"authorization": f"Bearer {UPSTREAM_KEY}"},
                   json={"model": "mock-error-429", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and UPSTREAM_KEY in r.text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("prefix,path", PATHS, ids=["openai", "openai-to-anthropic", "anthropic"])
def test_no_upstream_error_path_shows_the_upstream_key(gateway, prefix, path, stream):
    gw, _ = gateway
    for status in STATUSES:
        r = call(gw, prefix, path, f"mock-error-{status}", stream)
        assert r.status_code == (502 if status == 401 else status), r.text
        assert_no_key(client_visible(r))
        body = r.json()
        error = body["error"]
        if path == "/v1/messages":
            assert body["type"] == "error"
        assert error["message"].startswith(("upstream answered HTTP", "the upstream provider rejected"))
    r = call(gw, prefix, path, "mock-error-stream", stream)
    assert_no_key(client_visible(r))
    if stream:
        assert r.status_code == 200 and b"upstream sent an error event" in r.content, r.content


def assert_names_the_variable_never_its_value(text: str, name: str, value: str) -> None:
    assert f"${name}" in text, text
    for fragment in (value, value[3:], value[-12:]):
        assert fragment not in text, text


def test_validate_names_the_variable_never_its_value(tmp_path):
    """The issue's case: `port: $OPENAI_API_KEY` printed `got 'sk-upstream-...'`."""
    path = tmp_path / "config.yaml"
    path.write_text("llm:\n  port: $OPENAI_API_KEY\n  models: [{name: '*', provider: openAI}]\n")
    result = subprocess.run([*script_command("tollgate"), "validate", "-f", str(path)], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "OPENAI_API_KEY": UPSTREAM_KEY})
    assert result.returncode == 1, result
    assert f"{path}:2: llm.port:" in result.stderr
    assert_names_the_variable_never_its_value(result.stdout + result.stderr, "OPENAI_API_KEY", UPSTREAM_KEY)


def test_a_reload_log_names_the_variable_never_its_value(tmp_path):
    port, admin = free_port(), free_port()
    config = {"config": {"adminAddr": f"127.0.0.1:{admin}"},
              "llm": {"port": port, "policies": {"apiKey": {"keys": [{"key": CLIENT_KEY}]}},
                      "models": [{"name": "*", "provider": "openAI", "params": {"apiKey": "$UPSTREAM_KEY"}}]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    gw = start_gateway(path, port, admin, env={"UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        path.write_text(yaml.safe_dump(config).replace(f"port: {port}", "port: $UPSTREAM_KEY"))
        deadline = time.monotonic() + 5
        while "config change rejected" not in gw.proc.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = gw.proc.log()
        assert "config change rejected" in log and "llm.port" in log, log
        assert_names_the_variable_never_its_value(log, "UPSTREAM_KEY", UPSTREAM_KEY)
    finally:
        gw.stop()
