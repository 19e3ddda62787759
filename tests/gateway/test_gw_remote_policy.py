"""Rule selection and descriptor resolution for remoteRateLimit (CEL, compiled once)."""

from gateway.cel import build_activation, compile_expr
from gateway.config.runtime import DescriptorEntry, RemoteDescriptor, RemotePolicy, RemoteRule
from gateway.policies.remote_ratelimit import parse_status, resolve, select_rule


def policy(domain: str, *descriptors: RemoteDescriptor) -> RemotePolicy:
    return RemotePolicy(host="127.0.0.1:1", domain=domain, descriptors=descriptors)


def descriptor(*entries: tuple[str, str], type_="tokens") -> RemoteDescriptor:
    return RemoteDescriptor(tuple(DescriptorEntry(k, compile_expr(v)) for k, v in entries), type=type_)


def act(meta: dict | None):
    return build_activation(meta, "POST", "/v1/chat/completions", {"x-team": "blue"}, {"requestModel": "gpt-4o"})


def test_first_true_condition_wins_and_errors_count_as_false():
    rules = (
        RemoteRule(compile_expr("apiKey.missing_field == 'x'"), policy("errors")),  # no such key: error
        RemoteRule(compile_expr("'not a bool'"), policy("not-bool")),
        RemoteRule(compile_expr("apiKey.user_id == 'mike'"), policy("mike")),
        RemoteRule(None, policy("everyone")),
    )
    assert select_rule(rules, act({"user_id": "mike"})).domain == "mike"
    assert select_rule(rules, act({"user_id": "alice"})).domain == "everyone"
    assert select_rule(rules[:3], act({"user_id": "alice"})) is None


def test_descriptors_whose_cel_fails_are_skipped():
    p = policy("d",
               descriptor(("user_id", "apiKey.user_id")),
               descriptor(("team", "apiKey.team")),  # not in this key's metadata
               descriptor(("model", "llm.requestModel"), ("header", "request.headers['x-team']")))
    resolved = resolve(p, act({"user_id": "mike"}))
    assert [d.entries for d in resolved] == [
        (("user_id", "mike"),),
        (("model", "gpt-4o"), ("header", "blue")),
    ]
    assert resolved[0].label() == "user_id=mike"
    assert resolved[0].as_json(7, 100) == {
        "entries": [{"key": "user_id", "value": "mike"}], "hits_addend": 7, "max_hits": 100}
    assert resolve(policy("d", descriptor(("team", "apiKey.team"))), act({})) == []


def test_status_parsing_follows_protojson():
    s = parse_status({"code": "OVER_LIMIT", "currentLimit": {"requestsPerUnit": 100, "unit": "DAY"},
                      "durationUntilReset": "37s", "retryAfter": "12s"})
    assert (s.code, s.limit, s.remaining, s.reset_after, s.retry_after) == ("OVER_LIMIT", 100, 0, 37.0, 12.0)
    ok = parse_status({"code": "OK"})  # unlimited / no rule: zero fields omitted
    assert ok.limit is None and ok.remaining == 0
