"""Conformance with envoyproxy/ratelimit's /json, against the real service and a real Redis.

The matching table and cases follow envoy's README examples, config tests and
integration tests; the config is tests/ratelimit/data/conformance.yaml plus the
ConfigMap manifest of agentgateway's Kubernetes virtual-keys example, loaded as-is.
"""

import shutil
import time
import uuid

import httpx
import pytest
from tests.harness.ratelimit import DATA, call, descriptor, launched, metric

D = "conformance"
DAY = 86400


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory):
    """The service with its clock at noon UTC (plus the seconds the tests take), so a
    day's window has half a day left whenever the suite runs."""
    config_dir = tmp_path_factory.mktemp("rl-conformance")
    shutil.copy(DATA / "conformance.yaml", config_dir)
    shutil.copy(DATA / "seed001-configmap.yaml", config_dir)
    now = time.time()
    noon = now // DAY * DAY + DAY / 2
    yield from launched(config_dir, redis_url, env={"TOLLGATE_CLOCK_OFFSET": str(noon - now)})


def uid() -> str:
    return uuid.uuid4().hex[:12]


def codes(response) -> list[str]:
    return [s["code"] for s in response.json()["statuses"]]


def limit_of(response, i=0) -> dict | None:
    return response.json()["statuses"][i].get("currentLimit")


# --- the seed -------------------------------------------------------------


def test_seed001_configmap_gives_mike_100_tokens_a_day(service):
    mike = descriptor(("user_id", "mike"))
    r = call(service, "token-budgets", {**mike, "hits_addend": 60})
    assert r.status_code == 200
    status = r.json()["statuses"][0]
    reset = int(status.pop("durationUntilReset").rstrip("s"))
    assert status == {"code": "OK", "currentLimit": {"requestsPerUnit": 100, "unit": "DAY"}, "limitRemaining": 40}
    assert DAY / 2 - 600 < reset <= DAY / 2  # a calendar day: until UTC midnight, not until refilled
    r = call(service, "token-budgets", {**mike, "hits_addend": 50})
    assert r.status_code == 429 and r.json()["overallCode"] == "OVER_LIMIT"
    # Other users have no limit in this domain.
    r = call(service, "token-budgets", descriptor(("user_id", "bob")), hits_addend=10_000)
    assert r.status_code == 200 and r.json()["statuses"] == [{"code": "OK"}]


# --- matching -------------------------------------------------------------


def test_exact_value_beats_the_default(service):
    blocked = call(service, D, descriptor(("remote_address", "50.0.0.5")))
    assert blocked.status_code == 429
    assert blocked.json()["statuses"][0]["currentLimit"] == {"unit": "SECOND"}  # zero omitted
    other = call(service, D, descriptor(("remote_address", f"10.{uid()}")))
    assert other.status_code == 200 and limit_of(other) == {"requestsPerUnit": 3, "unit": "MINUTE"}


def test_default_key_limits_each_value_separately(service):
    a, b = descriptor(("remote_address", uid())), descriptor(("remote_address", uid()))
    assert [call(service, D, a).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert call(service, D, b).status_code == 200


def test_nested_descriptors_and_the_top_level_default(service):
    number = uid()
    marketing = descriptor(("message_type", "marketing"), ("to_number", number))
    direct = descriptor(("to_number", number))
    r = call(service, D, marketing, direct)
    assert codes(r) == ["OK", "OK"]
    assert limit_of(r, 0)["requestsPerUnit"] == 2 and limit_of(r, 1)["requestsPerUnit"] == 5
    r = call(service, D, marketing, direct)
    assert r.json()["statuses"][1]["limitRemaining"] == 3
    r = call(service, D, marketing, direct)
    assert r.status_code == 429 and codes(r) == ["OVER_LIMIT", "OK"]


def test_placeholder_without_a_limit_is_not_limited(service):
    r = call(service, D, descriptor(("message_type", "marketing")))
    assert r.status_code == 200 and r.json()["statuses"] == [{"code": "OK"}]


def test_whitelisted_key_and_unknown_keys_and_domains_are_ok(service):
    for domain, d in [
        (D, descriptor(("internal", "anything"))),
        (D, descriptor(("nope", "x"))),
        ("no-such-domain", descriptor(("remote_address", "50.0.0.5"))),
    ]:
        r = call(service, domain, d)
        assert r.status_code == 200 and r.json() == {"overallCode": "OK", "statuses": [{"code": "OK"}]}


def test_depth_must_match(service):
    deeper = call(service, D, descriptor(("depth", "one"), ("sub", "x")))
    assert deeper.json()["statuses"] == [{"code": "OK"}]
    exact = call(service, D, descriptor(("depth", "one")), hits_addend=0)
    assert limit_of(exact) == {"requestsPerUnit": 1, "unit": "MINUTE"}


def test_wildcard_gives_each_value_its_own_bucket_and_exact_wins(service):
    a, b = descriptor(("path", f"/api/{uid()}")), descriptor(("path", f"/api/{uid()}"))
    assert [call(service, D, a).status_code for _ in range(3)] == [200, 200, 429]
    assert call(service, D, b).status_code == 200
    special = call(service, D, descriptor(("path", "/api/special")), hits_addend=0)
    assert limit_of(special)["requestsPerUnit"] == 7
    assert call(service, D, descriptor(("path", "/other"))).json()["statuses"] == [{"code": "OK"}]


def test_share_threshold_makes_wildcard_values_share_one_bucket(service):
    prefix = f"files/{uid()}"
    results = [call(service, D, descriptor(("files", f"{prefix}-{i}"))).status_code for i in range(4)]
    assert results == [200, 200, 200, 429]


def test_unlimited_never_limits_and_reports_max_remaining(service):
    for _ in range(3):
        r = call(service, D, descriptor(("ldap", "x")), hits_addend=1_000_000)
        assert r.status_code == 200
        assert r.json()["statuses"] == [{"code": "OK", "limitRemaining": 4294967295}]


def test_shadow_mode_answers_ok_and_counts_what_it_would_have_refused(service):
    shady = descriptor(("service", uid()), ("user", "shady"))
    labels = {"domain": D, "descriptor": "service.user_shady"}
    before = metric(service, "tollgate_ratelimit_shadow_mode_total", **labels)
    call(service, D, shady)
    r = call(service, D, shady)
    assert r.status_code == 200 and r.json()["overallCode"] == "OK"
    assert r.json()["statuses"] == [
        {"code": "OK", "currentLimit": {"requestsPerUnit": 1, "unit": "MINUTE"}, "durationUntilReset": "120s"},
    ]  # envoy's base limiter: OK in the status too, nothing remaining
    assert metric(service, "tollgate_ratelimit_shadow_mode_total", **labels) == before + 1
    over = metric(service, "tollgate_ratelimit_decisions_total", api="json", code="OVER_LIMIT", **labels)
    assert over == 0  # what was answered: OK


def test_replaces_drops_the_named_limit(service):
    user = uid()
    both = (descriptor(("key_1", "value_1"), ("user", user)), descriptor(("key_2", "value_2"), ("user", user)))
    for expected in (3, 2, 1):  # only the 4/min limit counts; the replaced one reports plain OK
        r = call(service, D, *both)
        assert r.json()["statuses"][0] == {"code": "OK"}
        assert r.json()["statuses"][1]["limitRemaining"] == expected
    # Alone, the named limit applies, untouched by the calls above.
    alone = call(service, D, both[0])
    assert limit_of(alone)["requestsPerUnit"] == 2 and alone.json()["statuses"][0]["limitRemaining"] == 1


def test_fixed_window_algorithm(service):
    w = descriptor(("window", uid()))
    r = [call(service, D, w) for _ in range(3)]
    assert [x.status_code for x in r] == [200, 200, 429]
    reset = int(r[0].json()["statuses"][0]["durationUntilReset"].rstrip("s"))
    assert 0 < reset <= 3600


# --- hits -----------------------------------------------------------------


def test_hits_addend_forms_and_check_only(service):
    b = ("budget", uid())
    assert call(service, D, descriptor(b), hits_addend=10).json()["statuses"][0]["limitRemaining"] == 990
    assert call(service, D, descriptor(b), hitsAddend="10").json()["statuses"][0]["limitRemaining"] == 980
    assert call(service, D, descriptor(b), hits_addend=0).json()["statuses"][0]["limitRemaining"] == 979
    r = call(service, D, descriptor(b, hits_addend=0), hits_addend=500)  # per-descriptor 0: check only
    assert r.json()["statuses"][0]["limitRemaining"] == 979
    r = call(service, D, descriptor(b, hitsAddend="29"), hits_addend=500)  # the descriptor's own wins
    assert r.json()["statuses"][0]["limitRemaining"] == 950


def test_json_charges_even_when_over_limit(service):
    b = ("budget", uid())
    assert call(service, D, descriptor(b), hits_addend=900).status_code == 200
    assert call(service, D, descriptor(b), hits_addend=200).status_code == 429
    # Those 200 hits were charged: 100 left would pass, but only -100 is left.
    assert call(service, D, descriptor(b), hits_addend=0).status_code == 429


def test_limit_in_the_request_overrides_the_config(service):
    d = descriptor(("remote_address", uid()), limit={"requests_per_unit": 1, "unit": "HOUR"})
    r = call(service, D, d)
    assert r.status_code == 200 and limit_of(r) == {"requestsPerUnit": 1, "unit": "HOUR"}
    assert call(service, D, d).status_code == 429
    unknown_domain = call(service, "no-such-domain", d)
    assert unknown_domain.json()["statuses"] == [{"code": "OK"}]


# --- the status and body matrix ------------------------------------------


@pytest.mark.parametrize("body, message", [
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"domain": "d", "descriptors": [{"entries": []}], "extra": 1}', 'unknown field "extra"'),
    (b'{"domain": "", "descriptors": [{"entries": []}]}', "rate limit domain must not be empty"),
    (b'{"domain": "d"}', "rate limit descriptor list must not be empty"),
    (b'{"domain": "d", "descriptors": []}', "rate limit descriptor list must not be empty"),
    (b'{"domain": "d", "descriptors": [{"entries": [{"key": 1}]}]}', "descriptors[0].entries[0].key"),
    (b'{"domain": "d", "descriptors": [{"entries": [{"key": "a", "vaule": "b"}]}]}', 'unknown field "vaule"'),
    (b'{"domain": "d", "descriptors": [{}], "hits_addend": -1}', "out of range"),
    (b'{"domain": "d", "descriptors": [{}], "hits_addend": "many"}', "expected an integer"),
    (b'{"domain": "d", "descriptors": [{}], "hits_addend": 1, "hitsAddend": 1}', "duplicate field"),
    (b'{"domain": "d", "descriptors": [{"per_grant": 5}]}', 'unknown field "per_grant"'),
    (b'{"domain": "d", "descriptors": [{"hits_addend": 9007199254740993}]}', "9007199254740993 is out of range"),
    (b'{"domain": "d", "descriptors": [{}], "id": "r1"}', 'unknown field "id"'),
    (b'{"domain": "d", "descriptors": [{"limit": {"requests_per_unit": 1, "unit": "FORTNIGHT"}}]}', "unit"),
])
def test_malformed_requests_are_400_naming_the_problem(service, body, message):
    r = httpx.post(f"{service}/json", content=body, timeout=5)
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_protojson_reply_shapes(service):
    addr = descriptor(("remote_address", uid()))
    ok = call(service, D, addr, hits_addend=3)
    assert ok.headers["content-type"] == "application/json"
    assert ok.json() == {
        "overallCode": "OK",
        "statuses": [{"code": "OK", "currentLimit": {"requestsPerUnit": 3, "unit": "MINUTE"},
                      "durationUntilReset": "60s"}],  # limitRemaining 0 is omitted
    }
    over = call(service, D, addr)
    assert over.status_code == 429
    assert over.json()["statuses"][0]["code"] == "OVER_LIMIT" and "limitRemaining" not in over.json()["statuses"][0]
    assert "retryAfter" not in over.text  # /json stays envoy's shape


def test_other_methods_and_sizes(service):
    assert httpx.get(f"{service}/json", timeout=5).status_code == 405
    assert httpx.post(f"{service}/json", content=b" " * (2 << 20), timeout=5).status_code == 413
    assert httpx.get(f"{service}/healthcheck", timeout=5).text == "OK"


def test_metrics_count_decisions_by_domain_descriptor_and_code(service):
    addr = descriptor(("remote_address", uid()))
    labels = {"api": "json", "domain": D, "descriptor": "remote_address"}
    ok_before = metric(service, "tollgate_ratelimit_decisions_total", code="OK", **labels)
    over_before = metric(service, "tollgate_ratelimit_decisions_total", code="OVER_LIMIT", **labels)
    call(service, D, addr, hits_addend=3)
    call(service, D, addr)
    assert metric(service, "tollgate_ratelimit_decisions_total", code="OK", **labels) == ok_before + 1
    assert metric(service, "tollgate_ratelimit_decisions_total", code="OVER_LIMIT", **labels) == over_before + 1
    tenant = uid()
    call(service, D, descriptor(("tenant", tenant)))
    detailed = {"api": "json", "domain": D, "descriptor": f"tenant_{tenant}", "code": "OK"}
    assert metric(service, "tollgate_ratelimit_decisions_total", **detailed) == 1
    assert metric(service, "tollgate_ratelimit_config_loads_total") >= 1
    assert metric(service, "tollgate_ratelimit_config_domains") == 2
