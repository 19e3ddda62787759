"""Request parsing: the fast path for the usual shape gives exactly what the full protojson parser gives."""

import pytest

from ratelimit_service.protocol import (
    BUDGET, EXTEND, JSON, RESERVE, SETTLE, BadRequest, _checked, _plain, parse_document,
)


def doc(*descriptors: dict, domain="d", **extra) -> dict:
    return {"domain": domain, "descriptors": list(descriptors), **extra}


def d(*entries, **extra) -> dict:
    return {"entries": [{"key": k, "value": v} for k, v in entries], **extra}


def rid(**extra) -> dict:
    return {"id": "r-1", **extra}


PLAIN = [
    (RESERVE, doc(d(("user_id", "mike")), **rid())),
    (RESERVE, doc(d(("user_id", "mike"), ("model", "gpt")), hits_addend=0, **rid())),
    (RESERVE, doc(d(("user_id", "mike"), hits_addend=10, per_grant=1), d(("team", "")), hits_addend=3,
                  **rid(lease_ms=30_000, max_grant=4000, min_grant=5))),
    (RESERVE, doc(d(("usd", "mike"), hits_addend=60, per_grant=0.6), **rid(max_grant=2**53))),
    (SETTLE, doc(d(("user_id", "mike"), hits_addend=0), d(("team", "a"), hits_addend=2**53), **rid())),
    (JSON, doc(d(("user_id", "mike"), hits_addend=2**53), hits_addend=2**32 - 1)),
    (JSON, doc(d())),  # no entries: matches nothing, as envoy
    (JSON, doc(d(("a", "b"), hits_addend=None), hits_addend=None)),  # null is unset
]

# Shapes the fast path leaves to the full parser: each must still come out the same.
OTHER = [
    (RESERVE, doc(d(("user_id", "mike"), hitsAddend=5), **rid())),
    (RESERVE, doc(d(("user_id", "mike"), hits_addend="5"), **rid())),
    (RESERVE, doc(d(("user_id", "mike"), hits_addend=5.0), **rid())),
    (RESERVE, doc(d(("user_id", "mike"), hits_addend=None), hitsAddend=2, **rid())),
    (RESERVE, doc(d(("user_id", "mike"), perGrant="0.6"), id="r-1", leaseMs="1000", maxGrant=9, minGrant="2")),
    (SETTLE, doc(d(("user_id", "mike"), hits_addend="30"), **rid())),
    (JSON, doc(d(("user_id", "mike"), limit={"requests_per_unit": 5, "unit": "HOUR"}))),
    (JSON, doc({"entries": [{"key": "user_id"}]})),  # no value: ""
    (JSON, doc({"entries": [{"key": "user_id", "value": None}]})),
    (JSON, doc({"entries": None})),
    (BUDGET, doc(d(("user_id", "mike")))),
    (EXTEND, {"id": "r-1", "lease_ms": 5000}),
]

BAD = [
    (RESERVE, doc(d(("user_id", "mike"), hits_addend=-1), **rid()), "descriptors[0].hits_addend: -1 is out of range"),
    (RESERVE, doc(d(("user_id", "mike"), hits_addend=True), **rid()), "descriptors[0].hits_addend: expected an integer"),
    (RESERVE, doc(d(("user_id", "mike")), hits_addend=2**32, **rid()), "hits_addend: 4294967296 is out of range"),
    (JSON, doc(d(("user_id", "mike"), hits_addend=2**53 + 1)),
     "descriptors[0].hits_addend: 9007199254740993 is out of range [0, 9007199254740992]"),
    (SETTLE, doc(d(("user_id", "mike"), hits_addend=-30), **rid()), "descriptors[0].hits_addend: -30 is out of range"),
    (SETTLE, doc(d(("user_id", "mike"), hits_addend="-5"), **rid()), "descriptors[0].hits_addend: -5 is out of range"),
    (SETTLE, doc(d(("user_id", "mike"), hits_addend=1e300), **rid()), "descriptors[0].hits_addend: 10000000000"),
    (SETTLE, doc(d(("user_id", "mike"), per_grant=1), **rid()), 'descriptors[0].unknown field "per_grant"'),
    (SETTLE, doc(d(("user_id", "mike")), **rid(lease_ms=5)), 'unknown field "lease_ms"'),
    (RESERVE, doc(d(("user_id", "mike"), max_hits=5), **rid()), 'descriptors[0].unknown field "max_hits"'),
    (RESERVE, doc(d(("user_id", "mike"), per_grant=0), **rid()), "descriptors[0].per_grant: 0 is out of range (0, "),
    (RESERVE, doc(d(("user_id", "mike"), per_grant=-0.5), **rid()), "descriptors[0].per_grant: -0.5 is out of range"),
    (RESERVE, doc(d(("user_id", "mike"), per_grant="NaN"), **rid()), 'descriptors[0].per_grant: expected a number, got "NaN"'),
    (RESERVE, doc(d(("user_id", "mike"), per_grant="1e999"), **rid()), "descriptors[0].per_grant: 1e999 is out of range"),
    (RESERVE, doc(d(("user_id", "mike"), per_grant=True), **rid()), "descriptors[0].per_grant: expected a number, got True"),
    (RESERVE, doc(d(("user_id", "mike"))), "id: required"),
    (RESERVE, doc(d(("user_id", "mike")), id=""), "id: expected 1 to 64 characters of A-Z a-z 0-9 . _ : -"),
    (RESERVE, doc(d(("user_id", "mike")), id="a b"), "id: expected 1 to 64 characters"),
    (RESERVE, doc(d(("user_id", "mike")), id="x" * 65), "id: expected 1 to 64 characters"),
    (RESERVE, doc(d(("user_id", "mike")), id=7), "id: expected 1 to 64 characters"),
    (SETTLE, doc(d(("user_id", "mike"))), "id: required"),
    (RESERVE, doc(d(("user_id", "mike")), **rid(lease_ms=0)), "lease_ms: 0 is out of range [1, 86400000]"),
    (RESERVE, doc(d(("user_id", "mike")), **rid(lease_ms=86_400_001)), "lease_ms: 86400001 is out of range"),
    (RESERVE, doc(d(("user_id", "mike")), **rid(max_grant=0)), "max_grant: 0 is out of range [1, 9007199254740992]"),
    (RESERVE, doc(d(("user_id", "mike")), **rid(max_grant=2**53 + 1)), "max_grant: 9007199254740993 is out of range"),
    (RESERVE, doc(d(("user_id", "mike")), **rid(max_grant=5, min_grant=6)), "min_grant: 6 is above max_grant 5"),
    (RESERVE, doc(d(("user_id", 7)), **rid()), "descriptors[0].entries[0].value: expected a string"),
    (RESERVE, doc({"entries": [{"key": "a", "value": "b", "x": 1}]}, **rid()), 'descriptors[0].entries[0].unknown field "x"'),
    (RESERVE, doc({"entries": [{"key": "a", "x": 1}]}, **rid()), 'descriptors[0].entries[0].unknown field "x"'),
    (RESERVE, doc(d(("a", "b")), domain="", **rid()), "rate limit domain must not be empty"),
    (RESERVE, doc(**rid()), "rate limit descriptor list must not be empty"),
    (RESERVE, doc(d(("a", "b")), domain=5, **rid()), "domain: expected a string"),
    (RESERVE, doc(d(("a", "b")), extra=1, **rid()), 'unknown field "extra"'),
    (RESERVE, doc("x", **rid()), "descriptors[0]: expected an object"),
    (RESERVE, doc({"entries": {}}, **rid()), "descriptors[0].entries: expected a list"),
    (RESERVE, doc({"entries": ["a"]}, **rid()), "descriptors[0].entries[0]: expected an object"),
    (RESERVE, ["not", "an", "object"], "the request must be a JSON object"),
    (BUDGET, doc(d(("a", "b"), hits_addend=1)), 'descriptors[0].unknown field "hits_addend"'),
    (BUDGET, doc(d(("a", "b")), id="r-1"), 'unknown field "id"'),
    (EXTEND, {"id": "r-1", "domain": "d"}, 'unknown field "domain"'),
    (EXTEND, {"lease_ms": 5}, "id: required"),
    (EXTEND, {"id": "r-1", "lease_ms": -5}, "lease_ms: -5 is out of range"),
    (JSON, doc(d(("a", "b"), hits_addend="9" * 5000)), "descriptors[0].hits_addend: expected an integer, got \"999"),
]


@pytest.mark.parametrize("api,body", PLAIN)
def test_the_usual_shape_takes_the_fast_path_and_parses_as_the_full_parser(api, body):
    fast = _plain(body, api)
    assert fast is not None
    assert fast == _checked(body, api)


@pytest.mark.parametrize("api,body", OTHER)
def test_other_shapes_parse_as_the_full_parser(api, body):
    assert _plain(body, api) is None
    assert parse_document(body, api) == _checked(body, api)


@pytest.mark.parametrize("api,body,message", BAD)
def test_bad_requests_get_the_full_parsers_message(api, body, message):
    with pytest.raises(BadRequest) as error:
        parse_document(body, api)
    assert str(error.value).startswith(message)


def test_a_reserve_takes_the_documented_defaults():
    request = parse_document(doc(d(("user_id", "mike"), per_grant=1), **rid()), RESERVE)
    assert (request.lease_ms, request.max_grant, request.min_grant) == (600_000, 2**53, 1)
    assert request.descriptors[0].per_grant == 1.0 and type(request.descriptors[0].per_grant) is float
