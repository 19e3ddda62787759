"""Request parsing: the fast path for the usual shape gives exactly what the full protojson parser gives."""

import pytest

from ratelimit_service.protocol import JSON, RESERVE, SETTLE, BadRequest, _checked, _plain, parse_document


def doc(*descriptors: dict, domain="d", **extra) -> dict:
    return {"domain": domain, "descriptors": list(descriptors), **extra}


def d(*entries, **extra) -> dict:
    return {"entries": [{"key": k, "value": v} for k, v in entries], **extra}


PLAIN = [
    (RESERVE, doc(d(("user_id", "mike")))),
    (RESERVE, doc(d(("user_id", "mike"), ("model", "gpt")), hits_addend=0)),
    (RESERVE, doc(d(("user_id", "mike"), hits_addend=10, max_hits=4000), d(("team", "")), hits_addend=3)),
    (SETTLE, doc(d(("user_id", "mike"), hits_addend=-30), d(("team", "a"), hits_addend=2**64 - 1))),
    (JSON, doc(d(("user_id", "mike"), hits_addend=2**64 - 1), hits_addend=2**32 - 1)),
    (JSON, doc(d())),  # no entries: matches nothing, as envoy
    (SETTLE, doc(d(("k", "v")), hits_addend=-(2**32 - 1))),
    (JSON, doc(d(("a", "b"), hits_addend=None), hits_addend=None)),  # null is unset
]

# Shapes the fast path leaves to the full parser: each must still come out the same.
OTHER = [
    (RESERVE, doc(d(("user_id", "mike"), hitsAddend=5))),
    (RESERVE, doc(d(("user_id", "mike"), hits_addend="5"))),
    (RESERVE, doc(d(("user_id", "mike"), hits_addend=5.0))),
    (RESERVE, doc(d(("user_id", "mike"), hits_addend=None), hitsAddend=2)),
    (RESERVE, doc(d(("user_id", "mike"), maxHits=9))),
    (JSON, doc(d(("user_id", "mike"), limit={"requests_per_unit": 5, "unit": "HOUR"}))),
    (JSON, doc({"entries": [{"key": "user_id"}]})),  # no value: ""
    (JSON, doc({"entries": [{"key": "user_id", "value": None}]})),
    (JSON, doc({"entries": None})),
]

BAD = [
    (RESERVE, doc(d(("user_id", "mike"), hits_addend=-1)), "descriptors[0].hits_addend: -1 is out of range"),
    (RESERVE, doc(d(("user_id", "mike"), hits_addend=True)), "descriptors[0].hits_addend: expected an integer"),
    (RESERVE, doc(d(("user_id", "mike")), hits_addend=2**32), "hits_addend: 4294967296 is out of range"),
    (SETTLE, doc(d(("user_id", "mike"), max_hits=1)), 'descriptors[0].unknown field "max_hits"'),
    (RESERVE, doc(d(("user_id", "mike"), max_hits=-1)), "descriptors[0].max_hits: -1 is out of range"),
    (RESERVE, doc(d(("user_id", 7))), "descriptors[0].entries[0].value: expected a string"),
    (RESERVE, doc({"entries": [{"key": "a", "value": "b", "x": 1}]}), 'descriptors[0].entries[0].unknown field "x"'),
    (RESERVE, doc({"entries": [{"key": "a", "x": 1}]}), 'descriptors[0].entries[0].unknown field "x"'),
    (RESERVE, doc(d(("a", "b")), domain=""), "rate limit domain must not be empty"),
    (RESERVE, doc(), "rate limit descriptor list must not be empty"),
    (RESERVE, doc(d(("a", "b")), domain=5), "domain: expected a string"),
    (RESERVE, doc(d(("a", "b")), extra=1), 'unknown field "extra"'),
    (RESERVE, doc("x"), "descriptors[0]: expected an object"),
    (RESERVE, doc({"entries": {}}), "descriptors[0].entries: expected a list"),
    (RESERVE, doc({"entries": ["a"]}), "descriptors[0].entries[0]: expected an object"),
    (RESERVE, ["not", "an", "object"], "the request must be a JSON object"),
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
