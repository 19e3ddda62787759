"""Seed 001: per-user token budgets through the global rate-limit service.

Real redis-server, tollgate-ratelimit loading the seed's ConfigMap manifest as-is,
tollgate with keys from a keysDir mirroring the seed's Secret, and the mock upstream
speaking Anthropic behind the `/anthropic` route.
"""

from pathlib import Path

import httpx
import pytest

from tests.harness.stack import Stack, write_keys_dir

SEED_CONFIGMAP = (Path(__file__).resolve().parent.parent / "ratelimit" / "data" / "seed001-configmap.yaml")
MIKE = "sk-mike-key"
ALICE = "sk-alice-key"
PROMPT = {
    "model": "claude-sonnet-5",
    "messages": [{"role": "user",
                  "content": "Write me a paragraph containing the best way to think about Istio Ambient Mesh"}],
}


def seed_gateway_config(stack: Stack, keys_dir: Path) -> dict:
    """The seed's Gateway + Backend + HTTPRoute + policy, in standalone form."""
    return {"binds": [{"port": "@PORT@", "listeners": [{"routes": [{
        "name": "claude",
        "matches": [{"path": {"pathPrefix": "/anthropic"}}],
        "backends": [{"ai": {"name": "anthropic",
                             "provider": {"anthropic": {"model": "claude-sonnet-5"}},
                             "hostOverride": stack.mock_url.removeprefix("http://")}}],
        "policies": {
            "urlRewrite": {"path": {"full": "/v1/chat/completions"}},
            "backendAuth": {"key": "$ANTHROPIC_API_KEY"},
            "apiKey": {"mode": "strict", "keysDir": str(keys_dir)},
            "remoteRateLimit": {"conditional": [{
                "condition": "apiKey.user_id == 'mike'",
                "policy": {"global": {
                    "domain": "token-budgets",
                    "host": stack.ratelimit_host,
                    "descriptors": [{"entries": [{"name": "user_id", "expression": "apiKey.user_id"}],
                                     "unit": "Tokens"}],
                }},
            }]},
        },
    }]}]}]}


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    try:
        s.start_redis()
        s.start_mock("--completion-tokens", "248")
        s.config_dir = tmp_path / "ratelimit"
        s.config_dir.mkdir()
        (s.config_dir / "ratelimit-config.yaml").write_text(SEED_CONFIGMAP.read_text())
        s.start_ratelimit("")
        keys = write_keys_dir(tmp_path / "keys", {
            "mike": {"key": MIKE, "metadata": {"user_id": "mike"}},
            "alice": {"key": ALICE, "metadata": {"user_id": "alice"}},
        })
        s.start_gateway(seed_gateway_config(s, keys))
        yield s
    finally:
        s.stop()


def post(stack: Stack, key: str | None) -> httpx.Response:
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{stack.gateways[0].url}/anthropic", json=PROMPT, headers=headers, timeout=10)


def test_mike_gets_one_answer_then_429(stack):
    first = post(stack, MIKE)
    assert first.status_code == 200, first.text
    usage = first.json()["usage"]
    assert usage["total_tokens"] > 100  # the answer that crosses the 100-token day completes
    assert first.json()["choices"][0]["message"]["content"]
    second = post(stack, MIKE)
    assert second.status_code == 429, second.text
    assert "user_id=mike" in second.json()["error"]["message"]
    assert int(second.headers["retry-after"]) >= 1
    assert second.headers["x-ratelimit-limit"] == "100"


def test_other_keys_skip_the_budget(stack):
    assert post(stack, MIKE).status_code == 200
    for _ in range(3):
        r = post(stack, ALICE)
        assert r.status_code == 200, r.text


def test_missing_key_is_401_and_upstream_sees_only_its_own_key(stack):
    assert post(stack, None).status_code == 401
    httpx.delete(f"{stack.mock_url}/_mock/requests")
    assert post(stack, ALICE).status_code == 200
    (seen,) = stack.mock_requests()
    assert seen["path"] == "/v1/messages"  # translated from the rewritten OpenAI path
    assert seen["headers"]["x-api-key"] == "sk-ant-upstream-e2e-secret"
    assert ALICE not in repr(seen)
