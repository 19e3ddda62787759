"""Many keys: every key's spend series is kept (10,000, each agreeing with its tokens), and a key added, changed or removed among
10,000 (a mounted Secret's `..data` swap included) takes effect within a second."""

import json
import math
import re
import time
from pathlib import Path

import httpx

from tests.harness.kubelet import key_files, project
from tests.harness.procs import free_port, start_gateway, start_mock_llm


PRICE_IN, PRICE_OUT = 0.15, 0.60  # USD per 1M tokens: micro-dollars per token


def config(path: Path, port: int, admin: int, mock: str, keys: list[dict] | None = None,
           keys_dir: Path | None = None) -> Path:
    api_key = {"keysDir": str(keys_dir)} if keys_dir else {"keys": keys}
    path.write_text(json.dumps({  # JSON is YAML: quicker to write for thousands of keys
        "config": {"adminAddr": f"127.0.0.1:{admin}", "metrics": {"fields": {"add": {"user_id": "apiKey.user_id"}}},
                   "modelCatalog": {"gpt-4o-mini": {"input": PRICE_IN, "output": PRICE_OUT}}},
        "llm": {"port": port, "policies": {"apiKey": api_key},
                "models": [{"name": "*", "provider": "openAI", "params": {"apiKey": "k", "baseUrl": mock}}]},
    }))
    return path


def chat(client: httpx.Client, url: str, key: str) -> int:
    return client.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).status_code


def test_every_keys_spend_series_is_kept_past_ten_thousand_and_agrees_with_its_tokens(tmp_path):
    """The OTel SDK's default cardinality limit (2,000) merged the rest into one overflow
    series; each of 10,000 keys keeps its own, and each one's cost is its tokens, priced."""
    mock, mock_url = start_mock_llm(None, "--no-record")
    port, admin = free_port(), free_port()
    keys = [{"key": f"sk-scale-{i}", "metadata": {"user_id": f"u{i}"}} for i in range(10_000)]
    gw = start_gateway(config(tmp_path / "gw.yaml", port, admin, mock_url, keys=keys), port, admin)
    try:
        with httpx.Client(timeout=10) as client:
            assert all(chat(client, gw.url, k["key"]) == 200 for k in keys)
        text = httpx.get(f"{gw.admin}/metrics", timeout=30).text
        assert "otel_metric_overflow" not in text
        cost = {u: float(v) for u, v in re.findall(
            r'tollgate_gen_ai_client_cost_usd_total\{[^}]*user_id="(u\d+)"[^}]*\} (\S+)', text)}
        tokens: dict[str, dict[str, float]] = {}
        for kind, user, value in re.findall(
                r'tollgate_gen_ai_client_token_usage_sum\{[^}]*gen_ai_token_type="(\w+)"[^}]*user_id="(u\d+)"'
                r'[^}]*\} (\S+)', text):
            tokens.setdefault(user, {})[kind] = float(value)
        assert len(cost) == len(tokens) == 10_000
        for user, used in tokens.items():  # one call each: its cost rounded up to a micro-dollar once
            priced = math.ceil(used["input"] * PRICE_IN + used["output"] * PRICE_OUT)
            assert round(cost[user] * 1_000_000) == priced, (user, used, cost[user])
    finally:
        gw.stop()
        mock.stop()


def publish(mount: Path, stamp: str, keys: dict[str, str]) -> None:
    """A Secret volume's update (`stamp` names the version): an atomic `..data` swap."""
    project(mount, key_files(keys))


def until(client: httpx.Client, url: str, key: str, status: int) -> float:
    """Seconds until `key` gets `status` (at most 5)."""
    started = time.monotonic()
    while chat(client, url, key) != status:
        assert time.monotonic() - started < 5, f"{key} never got {status}"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_key_change_among_ten_thousand_takes_effect_within_a_second(tmp_path):
    mock, mock_url = start_mock_llm(None, "--no-record")
    plain, secret = tmp_path / "plain", tmp_path / "secret"
    plain.mkdir()
    secret.mkdir()
    for i in range(10_000):
        (plain / f"k{i}").write_text(json.dumps({"key": f"sk-many-{i}", "metadata": {"user_id": f"u{i}"}}))
    publish(secret, "v1", {"mike": "sk-mike-1"})
    port, admin = free_port(), free_port()
    path = config(tmp_path / "gw.yaml", port, admin, mock_url, keys_dir=plain)
    gw = start_gateway(path, port, admin)
    try:
        with httpx.Client(timeout=10) as client:
            assert chat(client, gw.url, "sk-many-9999") == 200
            (plain / "new").write_text(json.dumps({"key": "sk-brand-new"}))
            added = until(client, gw.url, "sk-brand-new", 200)
            (plain / "k5").write_text(json.dumps({"key": "sk-rotated-5"}))  # edited in place
            changed = until(client, gw.url, "sk-rotated-5", 200)
            assert chat(client, gw.url, "sk-many-5") == 401
            (plain / "k7").unlink()
            removed = until(client, gw.url, "sk-many-7", 401)
            # Now the keys come from a mounted Secret: the config names the other directory.
            path.write_text(path.read_text().replace(str(plain), str(secret)))
            until(client, gw.url, "sk-mike-1", 200)
            publish(secret, "v2", {"mike": "sk-mike-2"})
            swapped = until(client, gw.url, "sk-mike-2", 200)
            assert chat(client, gw.url, "sk-mike-1") == 401
        print(f"added {added:.2f}s, changed {changed:.2f}s, removed {removed:.2f}s, swapped {swapped:.2f}s")
        assert max(added, changed, removed, swapped) < 1.0
    finally:
        gw.stop()
        mock.stop()
