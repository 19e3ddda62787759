"""Virtual key authentication: digests only, modes, header locations, model globs."""

import pytest
from starlette.datastructures import Headers

from gateway.policies.apikey import ApiKeyPolicy, AuthError, KeyStore, key_digest


def store_with(*keys: tuple[str, dict, list | None]) -> KeyStore:
    store = KeyStore()
    for key, metadata, allowed in keys:
        store.add(key_digest(key), metadata, allowed)
    return store


STORE = store_with(("sk-alice", {"user": "alice"}, None), ("sk-bob", {"user": "bob"}, ["gpt-4o*", "claude-3-haiku"]))


def bearer(mode="strict", store=STORE):
    return ApiKeyPolicy(mode, "authorization", "Bearer ", store, ("x-api-key",))


def h(**headers) -> Headers:
    return Headers({k.replace("_", "-"): v for k, v in headers.items()})


def test_store_keeps_only_digests():
    store = store_with(("sk-secret-value", {}, None))
    assert "sk-secret-value" not in repr(vars(store))
    identity = store.find("sk-secret-value")
    assert identity.key_id == key_digest("sk-secret-value")[:12]


def test_duplicate_digest_is_refused():
    store = store_with(("k", {}, None))
    with pytest.raises(ValueError, match="duplicate"):
        store.add(key_digest("k"))


def test_strict_accepts_valid_key_and_exposes_metadata():
    identity = bearer().authenticate(h(Authorization="Bearer sk-alice"))
    assert identity.metadata == {"user": "alice"}


def test_bearer_scheme_is_case_insensitive():
    assert bearer().authenticate(h(authorization="bearer  sk-bob ")).metadata["user"] == "bob"


@pytest.mark.parametrize("headers, message", [
    ({}, "missing API key"),
    ({"authorization": "Bearer "}, "missing API key"),
    ({"authorization": "Bearer nope"}, "invalid API key"),
    ({"authorization": "Basic c2stYWxpY2U="}, "invalid API key: expected 'authorization: Bearer <key>'"),
])
def test_strict_refuses(headers, message):
    with pytest.raises(AuthError) as e:
        bearer().authenticate(Headers(headers))
    assert message in e.value.message


def test_optional_allows_anonymous_but_not_invalid():
    assert bearer("optional").authenticate(h()) is None
    with pytest.raises(AuthError, match="invalid API key"):
        bearer("optional").authenticate(h(authorization="Bearer nope"))
    assert bearer("optional").authenticate(h(authorization="Bearer sk-alice")).metadata["user"] == "alice"


def test_permissive_never_refuses_but_still_identifies():
    policy = bearer("permissive")
    assert policy.authenticate(h()) is None
    assert policy.authenticate(h(authorization="Bearer nope")) is None
    assert policy.authenticate(h(authorization="Basic xyz")) is None
    assert policy.authenticate(h(authorization="Bearer sk-bob")).metadata["user"] == "bob"


def test_default_location_also_reads_anthropic_x_api_key():
    policy = bearer()
    assert policy.authenticate(h(x_api_key="sk-alice")).metadata["user"] == "alice"
    # The configured header wins when both are sent.
    with pytest.raises(AuthError):
        policy.authenticate(h(authorization="Bearer nope", x_api_key="sk-alice"))


def test_custom_header_without_prefix():
    policy = ApiKeyPolicy("strict", "x-api-key", "", STORE)
    assert policy.authenticate(h(x_api_key="sk-alice")).metadata["user"] == "alice"
    with pytest.raises(AuthError, match="missing API key"):
        policy.authenticate(h(authorization="Bearer sk-alice"))


def test_allowed_models_globs():
    bob = STORE.find("sk-bob")
    assert bob.allows("gpt-4o") and bob.allows("gpt-4o-mini") and bob.allows("claude-3-haiku")
    assert not bob.allows("gpt-3.5-turbo") and not bob.allows("claude-3-haiku-2")
    assert STORE.find("sk-alice").allows("anything")
