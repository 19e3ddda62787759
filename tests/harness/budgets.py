"""The global token budget most end-to-end suites share: a domain, a gateway config, a probe."""

from __future__ import annotations

import httpx
import yaml

from tests.harness.stack import Stack

KEYS = {"sk-load-user": "load", "sk-other-user": "other"}


def domain_yaml(limit: int) -> str:
    return yaml.safe_dump({"domain": "token-budgets", "descriptors": [
        {"key": "user_id", "value": "load", "rate_limit": {"unit": "day", "requests_per_unit": limit}},
        {"key": "user_id", "value": "other", "rate_limit": {"unit": "day", "requests_per_unit": 10**9}},
    ]})


def gateway_config(stack: Stack, enforcement: str, failure_mode: str = "failClosed") -> dict:
    return {
        "llm": {
            "port": "@PORT@",
            "policies": {
                "apiKey": {"keys": [{"key": k, "metadata": {"user_id": u}} for k, u in KEYS.items()]},
                "remoteRateLimit": {
                    "host": stack.ratelimit_host, "domain": "token-budgets", "failureMode": failure_mode,
                    "descriptors": [{"entries": [{"key": "user_id", "value": "apiKey.user_id"}],
                                     "type": "tokens", "enforcement": enforcement}],
                },
            },
            "models": [{"name": "*", "provider": "openAI",
                        "params": {"apiKey": "sk-up", "baseUrl": stack.mock_url}}],
        },
    }


def remote_remaining(stack: Stack, user: str) -> int:
    r = httpx.post(f"http://{stack.ratelimit_host}/json", json={
        "domain": "token-budgets",
        "descriptors": [{"entries": [{"key": "user_id", "value": user}], "hits_addend": 0}]})
    return int(r.json()["statuses"][0].get("limitRemaining", 0))
