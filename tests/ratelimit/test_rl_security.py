"""The budget plane's guards: the bearer token on /v1, the loopback default, and numbers that never 500."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from tests.harness.procs import REPO, free_port
from tests.harness.ratelimit import descriptor, domain_dir, launched, reservation_id

from ratelimit_service.limiter import bucket_key

CONFIG = """
domain: d
descriptors:
  - key: user_id
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: daily
    rate_limit: {unit: day, requests_per_unit: 100}
"""
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    return domain_dir(tmp_path_factory, "rl-security", {"d.yaml": CONFIG})


@pytest.fixture(scope="module")
def guarded(config_dir, redis_url):
    yield from launched(config_dir, redis_url, env={"TOLLGATE_RATELIMIT_TOKEN": TOKEN})


def user() -> dict:
    return descriptor(("user_id", uuid.uuid4().hex))


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def post(base: str, path: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, headers=headers or {}, timeout=5)


def body(*descriptors: dict, **extra) -> dict:
    return {"domain": "d", "descriptors": list(descriptors), **extra}


def spent(base: str, d: dict) -> int:
    r = post(base, "/v1/budget", body({"entries": d["entries"]}), bearer(TOKEN))
    return r.json()["statuses"][0]["spent"]


def test_v1_needs_the_token_and_a_refusal_changes_nothing(guarded):
    u, rid = user(), reservation_id()
    reserve = {"domain": "d", "id": rid, "descriptors": [{**u, "hits_addend": 40}]}
    assert post(guarded, "/v1/reserve", reserve, bearer(TOKEN)).status_code == 200
    refund = {"domain": "d", "id": rid, "descriptors": [{**u, "hits_addend": 0}]}
    bodies = {
        "/v1/settle": refund, "/v1/extend": {"id": rid, "lease_ms": 1000},
        "/v1/batch": {"items": [{"op": "settle", **refund}]},
        "/v1/budget": {"domain": "d", "descriptors": [{"entries": u["entries"]}]},
        "/v1/reserve": reserve, "/v1/nothing-here": {},
    }
    for headers in ({}, bearer("wrong"), {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        for path, body in bodies.items():
            r = post(guarded, path, body, headers)
            assert r.status_code == 401, (path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json() == {"error": "missing or invalid bearer token (Authorization: Bearer "
                                         "<TOLLGATE_RATELIMIT_TOKEN>)"}
    assert spent(guarded, u) == 40  # the refused refunds changed nothing
    assert post(guarded, "/v1/settle", refund, {"authorization": f"bearer {TOKEN}"}).status_code == 200
    assert spent(guarded, u) == 0
    assert post(guarded, "/v1/nothing-here", {}, bearer(TOKEN)).status_code == 404


def test_json_healthcheck_and_metrics_stay_open_by_default(guarded):
    assert post(guarded, "/json", body({**user(), "hits_addend": 1})).status_code == 200
    assert httpx.get(f"{guarded}/healthcheck", timeout=5).text == "OK"
    metrics = httpx.get(f"{guarded}/metrics", timeout=5).text
    assert 'path="/v1/*",status="401"' in metrics  # probes of unknown paths share one label


def test_protect_json_and_the_token_file(config_dir, redis_url, tmp_path):
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")  # as a mounted Secret often ends
    for base in launched(config_dir, redis_url, "--protect-json", env={"TOLLGATE_RATELIMIT_TOKEN_FILE": str(secret)}):
        assert post(base, "/json", body(user())).status_code == 401
        assert post(base, "/json", body(user()), bearer(TOKEN)).status_code == 200
        assert post(base, "/v1/budget", body(user()), bearer(TOKEN + "x")).status_code == 401
        assert post(base, "/v1/budget", body(user()), bearer(TOKEN)).status_code == 200  # newline stripped


@pytest.mark.parametrize("env, message", [
    ({"TOLLGATE_RATELIMIT_TOKEN": "a", "TOLLGATE_RATELIMIT_TOKEN_FILE": "/x"},
     "set TOLLGATE_RATELIMIT_TOKEN or TOLLGATE_RATELIMIT_TOKEN_FILE, not both"),
    ({"TOLLGATE_RATELIMIT_TOKEN_FILE": "/nonexistent/token"}, "TOLLGATE_RATELIMIT_TOKEN_FILE: cannot read"),
    ({"TOLLGATE_CLOCK_OFFSET": "soon"}, "TOLLGATE_CLOCK_OFFSET: expected seconds, got 'soon'"),
    ({"TOLLGATE_CLOCK_OFFSET": "1e12"}, "TOLLGATE_CLOCK_OFFSET: 1e12 is out of range"),
])
def test_bad_settings_stop_the_service_naming_them(config_dir, redis_url, env, message):
    result = subprocess.run(
        [sys.executable, "-m", "ratelimit_service", "--config-dir", str(config_dir), "--redis-url", redis_url,
         "--port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=30, env={**os.environ, **env},
    )
    assert result.returncode == 2 and message in result.stderr


def listening(port: int) -> list[str]:
    """The local addresses LISTENing on `port`, from /proc/net/tcp (IPv4)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.append(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


@pytest.mark.skipif("HOST" in os.environ, reason="HOST is set for this test run")
def test_run_directly_it_binds_loopback_unless_host_says_otherwise(config_dir, redis_url):
    for env, address in ((None, "127.0.0.1"), ({"HOST": "0.0.0.0"}, "0.0.0.0")):
        for base in launched(config_dir, redis_url, host=None, env=env):
            assert listening(int(base.rsplit(":", 1)[1])) == [address]


# Numbers: what Lua's doubles cannot hold is refused at parse; what they can never makes a 500.


def test_hits_beyond_2_to_the_53_are_a_400_naming_the_field(guarded):
    u = user()
    for path, extra in (("/json", {}), ("/v1/settle", {"id": reservation_id()}), ("/v1/reserve", {"id": reservation_id()})):
        for hits in (2**53 + 1, 18446744073709551616, "1" + "0" * 30, 1e300):
            r = post(guarded, path, body({**u, "hits_addend": hits}, **extra), bearer(TOKEN))
            assert r.status_code == 400, (path, hits, r.text)
            assert r.json()["error"].startswith("descriptors[0].hits_addend: ")
    assert spent(guarded, u) == 0


def test_the_largest_settle_on_a_day_bucket_is_stored_not_a_500(guarded, redis_url):
    """A day bucket 2^53 in debt needs a TTL of ~10^18 ms: written as an integer, clamped to 10 years."""
    who = uuid.uuid4().hex
    d = descriptor(("daily", who), hits_addend=2**53)
    for rid in (reservation_id(), reservation_id()):
        r = post(guarded, "/v1/settle", body(d, id=rid), bearer(TOKEN))
        assert r.status_code == 200, r.text
        assert r.json()["statuses"][0]["code"] == "OVER_LIMIT"
    store = redis.Redis.from_url(redis_url)
    [key] = store.keys(bucket_key("d", "cal", (("daily", who),)) + ":*")
    assert 0 < store.pttl(key) <= 2 * 86400 * 1000  # a calendar day: until its end plus the grace
    assert float(store.get(key)) == 2 * 2**53
    # A token bucket that deep would drain for 10^13 years: its key lives 10 years, its reply says so.
    u = user()
    r = post(guarded, "/v1/settle", body({**u, "hits_addend": 2**53}, id=reservation_id()), bearer(TOKEN))
    assert r.status_code == 200 and r.json()["statuses"][0]["durationUntilReset"] == "315360000s"
    assert 315_000_000_000 < store.pttl(bucket_key("d", "tb", (("user_id", u["entries"][0]["value"]),))) <= 315_360_000_000
    store.close()
