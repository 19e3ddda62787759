"""The README walkthrough as code: alice is served, mike spends his 100 tokens and
gets 429, raising his daily limit in the domain YAML lets him through again."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx

KEYS = {"alice": "sk-alice-abc123def456", "bob": "sk-bob-xyz789uvw012", "mike": "sk-mike-key"}
MODEL = "gpt-4o-mini"


def chat(base_url: str, key: str, content: str = "Hello!") -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", timeout=15, headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": content}]})


def set_daily_limit(domain_file: Path, limit: int) -> None:
    """Edits mike's one-line override in place, as a user would in an editor."""
    text = domain_file.read_text()
    edited, count = re.subn(r"(value: mike, rate_limit: \{unit: day, requests_per_unit:\s*)\d+", rf"\g<1>{limit}", text)
    assert count == 1, f"expected mike's one-line override in {domain_file}"
    domain_file.write_text(edited)


def wait_for_status(send: Callable[[], httpx.Response], status: int, timeout: float) -> tuple[httpx.Response, float]:
    """Sends until the answer has `status`; returns it and the seconds it took."""
    started = time.monotonic()
    while True:
        response = send()
        elapsed = time.monotonic() - started
        if response.status_code == status or elapsed > timeout:
            return response, elapsed
        time.sleep(0.1)


def run_walkthrough(base_url: str, domain_file: Path, edit: Callable[[Path, int], None] = set_daily_limit) -> dict:
    """Runs every step and asserts each; returns measurements for the report."""
    alice = chat(base_url, KEYS["alice"])
    assert alice.status_code == 200, alice.text
    assert alice.json()["usage"]["total_tokens"] > 0

    stranger = chat(base_url, "sk-not-a-key")
    assert stranger.status_code == 401, stranger.text
    assert "key" in stranger.text.lower()

    first = chat(base_url, KEYS["mike"])
    assert first.status_code == 200, first.text
    spent = first.json()["usage"]["total_tokens"]
    assert spent > 100, f"mike's first answer used {spent} tokens: his budget is not spent"

    second = chat(base_url, KEYS["mike"])
    assert second.status_code == 429, second.text
    assert "user_id=mike" in second.text, second.text
    assert int(second.headers["retry-after"]) > 0
    assert json.loads(second.text)["error"]

    bob = chat(base_url, KEYS["bob"])
    assert bob.status_code == 200, "another key is not limited by mike's budget"

    edit(domain_file, 100_000)
    again, seconds = wait_for_status(lambda: chat(base_url, KEYS["mike"]), 200, timeout=5)
    assert again.status_code == 200, again.text
    assert seconds <= 2.5, f"the raised limit took {seconds:.2f}s to apply"
    return {"mike_first_tokens": spent, "limit_raise_seconds": seconds}
