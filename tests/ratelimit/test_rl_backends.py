"""The service process with `memory://`, with Redis down, and across a Redis restart."""

import uuid

import httpx
import pytest
from tests.harness.procs import free_port, start_redis
from tests.harness.ratelimit import call, descriptor, launch_service, metric, reservation_id, start_service

CONFIG = "domain: d\ndescriptors:\n  - key: user_id\n    rate_limit: {unit: hour, requests_per_unit: 3}\n"


@pytest.fixture
def config_dir(tmp_path):
    (tmp_path / "d.yaml").write_text(CONFIG)
    return tmp_path


def test_memory_url_runs_the_same_limits_in_process(config_dir):
    proc, base = start_service(config_dir, "memory://")
    try:
        user = descriptor(("user_id", "mike"))
        assert [call(base, "d", user).status_code for _ in range(4)] == [200, 200, 200, 429]
        reserve = call(base, "d", {**user, "hits_addend": 1}, path="/v1/reserve", id=reservation_id())
        assert reserve.status_code == 429 and reserve.json()["statuses"][0]["retryAfter"]
    finally:
        proc.stop()


def test_redis_down_is_a_500_naming_the_store_and_is_counted(config_dir):
    port = free_port()
    proc, base = launch_service(config_dir, f"redis://127.0.0.1:{port}/0", ready_status=503)
    try:
        r = call(base, "d", descriptor(("user_id", "x")))
        assert r.status_code == 500 and "rate limit store unavailable" in r.json()["error"]
        assert metric(base, "tollgate_ratelimit_redis_errors_total") == 1
        # Requests that need no Redis still work; the health check says why the rest cannot.
        assert call(base, "d", descriptor(("other", "x"))).status_code == 200
        health = httpx.get(f"{base}/healthcheck", timeout=5)
        assert health.status_code == 503
        assert health.text.startswith(f"redis unavailable: cannot connect to 127.0.0.1:{port}: [Errno 111]")
        redis, _ = start_redis(port)
        try:
            assert httpx.get(f"{base}/healthcheck", timeout=5).text == "OK"  # Redis is back
        finally:
            redis.stop()
    finally:
        proc.stop()


def test_redis_restart_is_survived(config_dir):
    port = free_port()
    redis, url = start_redis(port)
    proc, base = start_service(config_dir, url)
    user = descriptor(("user_id", uuid.uuid4().hex))
    try:
        assert call(base, "d", user).status_code == 200
        redis.stop()
        assert call(base, "d", user).status_code == 500
        redis, _ = start_redis(port)  # empty: no data, no script cache
        r = call(base, "d", user)
        assert r.status_code == 200 and r.json()["statuses"][0]["limitRemaining"] == 2
    finally:
        proc.stop()
        redis.stop()
