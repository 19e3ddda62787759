"""Remote settles are never lost while the gateway lives, and are flushed at shutdown."""

import signal
import time

import httpx
import pytest

from tests.harness.stack import Stack
from tests.harness.budgets import domain_yaml, gateway_config, remote_remaining

STREAM = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    s.start_redis()
    s.start_mock("--completion-tokens", "40", "--chunks", "10", "--chunk-delay-ms", "100")
    s.start_ratelimit(domain_yaml(10**6))
    s.start_gateway(gateway_config(s, "soft"))
    yield s
    s.stop()


def spent(stack: Stack) -> int:
    return 10**6 - remote_remaining(stack, "load")


def test_settle_retried_until_the_service_is_back(stack):
    gw = stack.gateways[0]
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=STREAM,
                      headers={"Authorization": "Bearer sk-load-user"}, timeout=10) as r:
        assert r.status_code == 200
        stream = r.iter_raw()
        next(stream)  # admitted: the reserve is done
        stack.ratelimit.stop()  # the service goes away while the answer streams
        body = b"".join(stream)
    assert body.rstrip().endswith(b"data: [DONE]")
    time.sleep(0.5)  # a few settle attempts fail meanwhile
    stack.start_ratelimit("")  # back on the same port
    deadline = time.monotonic() + 10
    while spent(stack) < 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spent(stack) >= 40  # prompt + 40 completion tokens, charged once the service returned
    assert "retrying" in gw.proc.log()


def test_shutdown_flushes_in_flight_settles(stack):
    gw = stack.gateways[0]
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=STREAM,
                      headers={"Authorization": "Bearer sk-load-user"}, timeout=10) as r:
        stream = r.iter_raw()
        next(stream)
        gw.proc.signal(signal.SIGTERM)  # mid-stream
        body = b"".join(stream)
    assert body.rstrip().endswith(b"data: [DONE]")
    assert gw.proc.popen.wait(15) == 0
    assert spent(stack) >= 40  # the settle went out before the process exited
