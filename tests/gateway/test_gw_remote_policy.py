"""Rule selection and descriptor resolution for remoteRateLimit (CEL, compiled once)."""

import pytest

from gateway.cel import Activation
from gateway.policies.budget import Unresolved
from gateway.policies.remote_ratelimit import RemoteRateLimit, resolve
from gateway.ratelimit_client import parse_status


def target(domain: str, *descriptors: dict, condition: str | None = None) -> dict:
    out = {"host": "127.0.0.1:1", "domain": domain, "descriptors": list(descriptors)}
    return {"condition": condition, **out} if condition is not None else out


def descriptor(*entries: tuple[str, str], type_="tokens", **extra) -> dict:
    return {"entries": [{"key": k, "value": v} for k, v in entries], "type": type_, **extra}


def act(meta: dict | None) -> Activation:
    return Activation(meta, "POST", "/v1/chat/completions", {"x-team": "blue"}, {"requestModel": "gpt-4o"})


def test_first_true_condition_wins_and_errors_count_as_false():
    one = descriptor(("user_id", "apiKey.user_id"))
    rules = [
        target("errors", one, condition="apiKey.missing_field == 'x'"),  # no such key: error
        target("not-bool", one, condition="'not a bool'"),
        target("mike", one, condition="apiKey.user_id == 'mike'"),
        target("everyone", one, condition="true"),
    ]
    policy = RemoteRateLimit.model_validate({"conditional": rules})
    assert policy.target(act({"user_id": "mike"})).domain == "mike"
    assert policy.target(act({"user_id": "alice"})).domain == "everyone"
    assert RemoteRateLimit.model_validate({"conditional": rules[:3]}).target(act({"user_id": "alice"})) is None


def test_descriptors_whose_cel_fails_are_skipped_unless_required():
    t = RemoteRateLimit.model_validate(target(
        "d",
        descriptor(("user_id", "apiKey.user_id")),
        descriptor(("team", "apiKey.team"), required=False),  # not in this key's metadata
        descriptor(("model", "llm.requestModel"), ("header", "request.headers['x-team']"))))
    resolved = resolve(t, act({"user_id": "mike"}))
    assert [d.entries for d in resolved] == [
        (("user_id", "mike"),),
        (("model", "gpt-4o"), ("header", "blue")),
    ]
    assert resolved[0].label() == "user_id=mike"
    assert resolved[0].as_json(7, 0.5) == {
        "entries": [{"key": "user_id", "value": "mike"}], "hits_addend": 7, "per_grant": 0.5}
    # Tokens and usd budgets are required by default: the request is refused, never unbudgeted.
    with pytest.raises(Unresolved, match="team"):
        resolve(RemoteRateLimit.model_validate(target("d", descriptor(("team", "apiKey.team")))), act({}))
    assert resolve(RemoteRateLimit.model_validate(target("d", descriptor(("team", "apiKey.team"), type_="requests"))),
                   act({})) == []  # a request count is not required unless it says so


def test_status_parsing_follows_protojson():
    s = parse_status({"code": "OVER_LIMIT", "currentLimit": {"requestsPerUnit": 100, "unit": "DAY"},
                      "durationUntilReset": "37s", "retryAfter": "12s"})
    assert (s.code, s.limit, s.remaining, s.reset_after, s.retry_after) == ("OVER_LIMIT", 100, 0, 37.0, 12.0)
    ok = parse_status({"code": "OK"})  # unlimited / no rule: zero fields omitted
    assert ok.limit is None and ok.remaining == 0
