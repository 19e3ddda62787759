"""/v1/batch against Redis: items share pipelined round trips, and an unreachable Redis fails them together."""

import socket
import threading
import time
import uuid
from urllib.parse import urlparse

import httpx
import pytest
from tests.harness.ratelimit import descriptor, launch_service, metric, reservation_id, start_service
from tests.harness.sockets import blackhole

CONFIG = "domain: d\ndescriptors:\n  - key: user_id\n    rate_limit: {unit: hour, requests_per_unit: 100}\n"
ITEMS = 1000


@pytest.fixture
def config_dir(tmp_path):
    (tmp_path / "d.yaml").write_text(CONFIG)
    return tmp_path


class CountingRelay:
    """A TCP relay in front of Redis that counts the reads carrying the service's commands.

    Commands sent one round trip at a time arrive in one read each; pipelined
    commands arrive many to a read.
    """

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.reads = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if count:
                    self.reads += 1
                sink.sendall(data)
        except OSError:
            pass
        finally:
            source.close()
            sink.close()

    def close(self) -> None:
        self.listener.close()


def batch_of_reserves(base: str, users: list[str], timeout: float = 30) -> tuple[list[dict], float]:
    items = [{"op": "reserve", "domain": "d", "id": reservation_id(),
              "descriptors": [descriptor(("user_id", u), hits_addend=1)]} for u in users]
    started = time.monotonic()
    r = httpx.post(f"{base}/v1/batch", json={"items": items}, timeout=timeout)
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    return r.json()["items"], elapsed


def test_a_batch_shares_redis_round_trips(config_dir, redis_url):
    target = urlparse(redis_url)
    relay = CountingRelay((target.hostname, target.port))
    proc, base = start_service(config_dir, f"redis://127.0.0.1:{relay.port}/0")
    try:
        batch_of_reserves(base, ["warm-up"])  # connects and caches the script
        before = relay.reads
        users = [uuid.uuid4().hex for _ in range(ITEMS)]
        answers, elapsed = batch_of_reserves(base, users)
        reads = relay.reads - before
        assert [a["status"] for a in answers] == [200] * ITEMS
        assert all(a["body"]["statuses"][0]["limitRemaining"] == 99 for a in answers)
        # One round trip per item would be at least ITEMS reads.
        assert reads <= ITEMS // 10, f"{reads} reads from the service for {ITEMS} items"
        print(f"{ITEMS} items: {reads} reads, {elapsed * 1000:.0f} ms")
    finally:
        proc.stop()
        relay.close()


def test_an_unreachable_redis_fails_the_items_within_one_connect_timeout(config_dir):
    listener, fillers = blackhole()
    port = listener.getsockname()[1]
    proc, base = launch_service(config_dir, f"redis://127.0.0.1:{port}/0", ready_status=503)
    try:
        items = [{"op": "reserve", "domain": "d", "id": f"r{i}", "descriptors": [descriptor(("user_id", str(i)))]}
                 for i in range(200)]
        items.append({"op": "settle", "domain": "elsewhere", "id": "x", "descriptors": [descriptor(("user_id", "x"))]})
        started = time.monotonic()
        r = httpx.post(f"{base}/v1/batch", json={"items": items}, timeout=30)
        elapsed = time.monotonic() - started
        answers = r.json()["items"]
        failed = {"error": f"rate limit store unavailable: cannot connect to 127.0.0.1:{port}: timed out"}
        assert all((a["status"], a["body"]) == (500, failed) for a in answers[:200]), answers[0]
        assert answers[200] == {"status": 200, "body": {"overallCode": "OK", "statuses": [{"code": "OK"}]}}
        # The items waiting on the one connection attempt share its failure (a 2 s timeout),
        # rather than trying again one after the other.
        assert elapsed < 8, elapsed
        assert metric(base, "tollgate_ratelimit_redis_errors_total") == 200
    finally:
        proc.stop()
        listener.close()
        for filler in fillers:
            filler.close()
