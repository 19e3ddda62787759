"""Fuzz: generated bad requests against a real service and Redis. Each one is a 4xx, never a 5xx or a hang.

Every body is a valid request with one thing broken (a field of the wrong type
or out of range, a missing id, an unknown field, a bad entry), or not a
request at all (bytes that are not JSON, lone surrogates, deep nesting,
numbers past 64 bits, oversized bodies). A batch of bad items answers 200
with a 4xx for every item. After each endpoint's run a good request is still
served. The seed is fixed (derandomize): the same 10,000+ requests every run.
"""

import json
import re
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tests.harness.ratelimit import descriptor, metric, reservation_id, serving

pytestmark = pytest.mark.fuzz

CONFIG = """
domain: fuzz
descriptors:
  - key: user_id
    rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: daily
    rate_limit: {unit: day, requests_per_unit: 1000, timezone: Asia/Kolkata}
  - key: usd
    rate_limit: {unit: month, usd: "2.50"}
"""
# Generated requests per endpoint: 10,000 in all, about a minute on a busy 2-core machine.
EXAMPLES = {"/json": 2200, "/v1/reserve": 2600, "/v1/settle": 2000, "/v1/batch": 1800, "/v1/budget": 700,
            "/v1/extend": 700}
ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

letters = st.text(alphabet="abcxyz-_ ", min_size=1, max_size=8)  # never a number, never "NaN"
not_integral = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
containers = st.one_of(st.lists(st.integers(), max_size=3), st.dictionaries(letters, st.integers(), max_size=2))
not_string = st.one_of(st.integers(), st.booleans(), not_integral, containers)
not_list = st.one_of(st.integers(), st.booleans(), letters, st.dictionaries(letters, st.integers(), max_size=2))
not_object = st.one_of(st.integers(), st.booleans(), letters, st.lists(st.integers(), max_size=3))
# Past what any integer field takes (2^53), or below what it takes (0 or 1), or no integer at all.
bad_count = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**53 + 1, max_value=2**80),
                      not_integral, st.booleans(), letters, containers)
bad_positive = st.one_of(st.integers(max_value=0), bad_count)
bad_id = st.one_of(st.just(""), st.text(alphabet="abc", min_size=65, max_size=90),
                   st.text(min_size=1, max_size=20).filter(lambda s: not ID.fullmatch(s)), not_string)
bad_per_grant = st.one_of(st.floats(max_value=0, allow_nan=False, allow_infinity=False),
                          st.floats(min_value=2**32 + 1, allow_infinity=False), st.booleans(), letters, containers)
bad_entry = st.one_of(
    not_object,
    st.fixed_dictionaries({"key": not_string, "value": st.just("v")}),
    st.fixed_dictionaries({"key": st.just("user_id"), "value": not_string}),
    st.fixed_dictionaries({"key": st.just("user_id"), "value": st.just("v"), "extra": st.integers()}),
)
bad_limit = st.one_of(
    not_object,
    st.fixed_dictionaries({"requests_per_unit": st.just(5), "unit": st.one_of(letters, st.integers(min_value=8))}),
    st.fixed_dictionaries({"requests_per_unit": st.integers(min_value=2**32), "unit": st.just("HOUR")}),
)

# What each endpoint takes, and how each of its fields can be broken.
REQUEST_POISON = {
    "domain": st.one_of(st.just(""), not_string),
    "descriptors": st.one_of(st.just([]), not_list, st.lists(not_object, min_size=1, max_size=3)),
    "hits_addend": st.one_of(st.integers(min_value=2**32), bad_count),
    "id": bad_id,
    "lease_ms": st.one_of(st.integers(min_value=86_400_001), bad_positive),
    "max_grant": bad_positive,
    "min_grant": bad_positive,
}
DESCRIPTOR_POISON = {
    "entries": st.one_of(not_list, st.lists(bad_entry, min_size=1, max_size=3)),
    "hits_addend": bad_count,
    "per_grant": bad_per_grant,
    "limit": bad_limit,
}
REQUEST_FIELDS = {
    "/json": ("domain", "descriptors", "hits_addend"),
    "/v1/reserve": ("domain", "descriptors", "hits_addend", "id", "lease_ms", "max_grant", "min_grant"),
    "/v1/settle": ("domain", "descriptors", "hits_addend", "id"),
    "/v1/budget": ("domain", "descriptors"),
    "/v1/extend": ("id", "lease_ms"),
}
DESCRIPTOR_FIELDS = {
    "/json": ("entries", "hits_addend", "limit"),
    "/v1/reserve": ("entries", "hits_addend", "per_grant", "limit"),
    "/v1/settle": ("entries", "hits_addend", "limit"),
    "/v1/budget": ("entries", "limit"),
}
REQUIRED = ("domain", "descriptors", "id")


def good(path: str, n: int = 1) -> dict:
    """A valid request for `path`, with n descriptors."""
    entries = [descriptor((key, uuid.uuid4().hex)) for key in ("user_id", "daily", "usd")[:n]]
    body = {"domain": "fuzz", "descriptors": entries, "id": reservation_id(), "lease_ms": 60_000}
    if path in ("/v1/reserve", "/v1/settle", "/json"):
        for d in entries:
            d["hits_addend"] = 1
    if path == "/v1/reserve":
        entries[0]["per_grant"] = 0.6
        body["max_grant"] = 100
    return {k: v for k, v in body.items() if k in REQUEST_FIELDS[path]}


@st.composite
def broken(draw, path: str) -> dict:
    """A valid request for `path` with exactly one thing wrong."""
    body = good(path, draw(st.integers(1, 3)))
    fields = REQUEST_FIELDS[path]
    where = draw(st.sampled_from(["request", "unknown", "missing"] + (["descriptor"] if path in DESCRIPTOR_FIELDS else [])))
    if where == "request":
        name = draw(st.sampled_from(fields))
        body[name] = draw(REQUEST_POISON[name])
    elif where == "missing" and any(f in fields for f in REQUIRED):
        del body[draw(st.sampled_from([f for f in REQUIRED if f in fields]))]
    elif where == "descriptor":
        d = draw(st.sampled_from(body["descriptors"]))
        name = draw(st.sampled_from(DESCRIPTOR_FIELDS[path] + ("bogus",)))
        d[name] = draw(DESCRIPTOR_POISON.get(name, st.integers()))
    else:
        name = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in fields and k not in (
            "hitsAddend", "leaseMs", "maxGrant", "minGrant")))
        body[name] = draw(st.integers())
    return body


NOT_JSON = st.one_of(
    st.binary(max_size=200).filter(lambda b: not _is_json(b)),
    st.sampled_from([
        b'{"domain": "fuzz", "descriptors": [{"entries": [{"key": "a", "value": "\\ud800"}]}]}',  # lone surrogate
        b'{"domain": "\xff\xfe"}', b'{"domain": 1e400}', b'{"domain": NaN}', b"[" * 5000 + b"]" * 5000,
        b'{"a": ' * 2000 + b"1" + b"}" * 2000, b'{"domain": "fuzz", "descriptors": [', b"",
        b" " * ((1 << 20) + 1),  # over the 1 MiB limit: 413
    ]),
)


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
        return True
    except ValueError:
        return False


def encoded(body) -> bytes:
    return json.dumps(body).encode()  # the standard library writes integers past 64 bits, as a client may


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("rl-fuzz"), redis_url, {"fuzz.yaml": CONFIG})


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=5) as c:  # a request that hangs fails its example
        yield c


FUZZ = settings(
    deadline=None, database=None, derandomize=True, phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def fuzz(client: httpx.Client, url: str, bodies, examples: int, check) -> int:
    """Sends `examples` generated bodies to `url`; `check(response)` asserts each answer. Returns how many."""
    sent = []

    @settings(FUZZ, max_examples=examples)
    @given(bodies)
    def run(body):
        raw = body if type(body) is bytes else encoded(body)
        response = client.post(url, content=raw, headers={"content-type": "application/json"})
        sent.append(response.status_code)
        check(response)

    run()
    return len(sent)


def only_4xx(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code != 413:
        assert response.json()["error"]


@pytest.mark.parametrize("path", ["/json", "/v1/reserve", "/v1/settle", "/v1/budget", "/v1/extend"])
def test_bad_requests_are_4xx_and_good_ones_still_served(service, client, path):
    bodies = st.one_of(broken(path), NOT_JSON, not_object.map(encoded))
    sent = fuzz(client, service + path, bodies, EXAMPLES[path], only_4xx)
    assert sent >= EXAMPLES[path]
    assert client.post(service + path, content=encoded(good(path, 3))).status_code == 200


def batch_item(path: str) -> st.SearchStrategy:
    return broken(path).map(lambda body: {"op": path.rsplit("/", 1)[1], **body})


BAD_BATCHES = st.one_of(
    NOT_JSON.filter(lambda b: len(b) < (1 << 20)),
    not_object.map(encoded),
    st.fixed_dictionaries({"items": not_list}).map(encoded),
    st.fixed_dictionaries({"items": st.just([]), "extra": st.integers()}).map(encoded),
    st.lists(not_object, min_size=1, max_size=3).map(lambda items: encoded({"items": items})),
    st.fixed_dictionaries({"op": st.one_of(letters, not_string), "domain": st.just("fuzz")}).map(
        lambda item: encoded({"items": [item]})),
    st.just(encoded({"items": [{"op": "extend", "id": "x"}] * 1001})),
)


def batch_answer(response: httpx.Response) -> None:
    """A malformed batch is a 400; a batch of bad items is a 200 with a 4xx for every item."""
    if response.status_code == 200:
        statuses = [item["status"] for item in response.json()["items"]]
        assert statuses and all(400 <= s < 500 for s in statuses), response.text[:300]
    else:
        only_4xx(response)


def test_bad_batches_and_batches_of_bad_items(service, client):
    items = st.one_of(*(batch_item(p) for p in ("/v1/reserve", "/v1/settle", "/v1/budget", "/v1/extend")))
    bodies = st.one_of(BAD_BATCHES, st.lists(items, min_size=1, max_size=5).map(lambda i: encoded({"items": i})))
    sent = fuzz(client, service + "/v1/batch", bodies, EXAMPLES["/v1/batch"], batch_answer)
    assert sent >= EXAMPLES["/v1/batch"]
    good_items = [{"op": "reserve", **good("/v1/reserve")}, {"op": "budget", **good("/v1/budget")}]
    r = client.post(service + "/v1/batch", content=encoded({"items": good_items}))
    assert [item["status"] for item in r.json()["items"]] == [200, 200]


def test_no_request_was_answered_with_a_5xx(service, client):
    for path in EXAMPLES:
        assert metric(service, "tollgate_ratelimit_requests_total", path=path, status="500") == 0
    assert metric(service, "tollgate_ratelimit_redis_errors_total") == 0
    assert client.get(service + "/healthcheck").text == "OK"
