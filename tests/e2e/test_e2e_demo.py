"""The README's quick start: `tollgate demo` serves the walkthrough on the default ports."""

import signal
import time

import httpx
import pytest

from tollgate_demo.demo import PORTS, port_free
from tests.harness.procs import Proc, python_cmd

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}


@pytest.fixture
def demo():
    busy = [f"{name} {port}" for name, port in PORTS.items() if not port_free(port)]
    if busy:
        pytest.skip(f"the demo's fixed ports are taken on this machine: {', '.join(busy)}")
    proc = Proc("demo", python_cmd("gateway", "demo"), env={"REDIS_URL": ""}).start()
    deadline = time.monotonic() + 40
    while "Tollgate is up" not in proc.log():
        assert proc.alive() and time.monotonic() < deadline, proc.log()
        time.sleep(0.2)
    yield proc
    proc.signal(signal.SIGINT)
    assert proc.popen.wait(30) == 0
    assert all(port_free(port) for port in PORTS.values())  # every child stopped with it


def test_walkthrough_on_the_demo(demo):
    def chat(key: str) -> httpx.Response:
        return httpx.post("http://127.0.0.1:4000/v1/chat/completions", json=BODY,
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)

    assert chat("sk-alice-abc123def456").status_code == 200
    assert chat("sk-mike-key").status_code == 200
    assert chat("sk-mike-key").status_code == 429
    assert "memory://" in demo.log()  # the embedded store, no Redis needed
    metrics = httpx.get("http://127.0.0.1:15000/metrics").text
    assert 'user_id="mike"' in metrics
