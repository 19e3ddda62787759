"""`apiKey`: virtual keys, as agentgateway's policy (its schema, key store and authentication).

Keys are hashed with sha256 when the config loads and only the digests are kept, so a
request costs one sha256 and one dict lookup. Comparing digests through a dict is not a
timing oracle for the key itself: learning a digest's prefix says nothing about the key.
The keys come from `keys:` and from `keysDir` files, which the config loader reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import JsonValue

from gateway.cel import to_cel
from gateway.schema import KeyHash, Model, NonEmpty, any_case

Mode = Literal["strict", "optional", "permissive"]

DEFAULT_HEADER = "authorization"
DEFAULT_PREFIX = "Bearer "
# Anthropic's SDKs send their key in x-api-key; accepted when no location is configured.
ANTHROPIC_HEADER = "x-api-key"


# --- schema ---------------------------------------------------------------------------

class HeaderLocation(Model):
    """A request header that carries the key."""

    name: NonEmpty
    """Header name, e.g. x-api-key."""
    prefix: str | None = None
    """Text before the key in the header; default "Bearer " for authorization, none otherwise."""


class KeyLocation(Model):
    """Where requests carry their key."""

    header: HeaderLocation
    """Read the key from this header: `{name: x-api-key}`."""


class KeyEntry(Model):
    """One virtual key; also the shape of each file in a keysDir."""

    key: NonEmpty | None = None
    """The key, as clients send it; or give its `keyHash` instead."""
    key_hash: KeyHash | None = None
    """The key's sha256, "sha256:" then 64 hex digits, instead of `key` (`tollgate keys generate` prints it)."""
    metadata: dict[str, JsonValue] = {}
    """Any JSON about the key's holder; CEL sees each field as apiKey.<field>, e.g. apiKey.user_id."""
    allowed_models: list[NonEmpty] | None = None
    """Globs of the models this key may use (another model is 403); default: every model."""
    one_of = (("key", "key_hash"),)

    @property
    def digest(self) -> str:
        return key_digest(self.key) if self.key is not None else self.key_hash.removeprefix("sha256:")


class ApiKey(Model):
    """agentgateway's `apiKey` policy: virtual keys, each with its metadata and allowed models."""

    mode: any_case("strict", "optional", "permissive") = "strict"
    """strict (default): a missing or invalid key is 401. optional: no key is served anonymously, an invalid key
    is 401. permissive: never refuses; a valid key still identifies the caller."""
    keys: list[KeyEntry] = []
    """Keys written in the config: `{key}` or `{keyHash}`, with `metadata` and `allowedModels`."""
    keys_dir: NonEmpty | None = None
    """Directory of one JSON file per key, each shaped as a `keys` entry; relative to the config file (to the
    working directory when it comes from an environment variable)."""
    location: KeyLocation | None = None
    """Where the key is read; default `authorization: Bearer <key>`, or x-api-key when that is absent."""


# --- runtime --------------------------------------------------------------------------

class AuthError(Exception):
    """The request must be refused with 401; the message says what was wrong with the key."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def key_digest(key: str) -> str:
    """Hex sha256 of a key, the form `keyHash: sha256:<hex>` stores."""
    return hashlib.sha256(key.encode()).hexdigest()


class Metadata(dict):
    """A key's metadata, carrying its CEL form so that CEL need not convert it per request."""

    __slots__ = ("cel",)

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        super().__init__(values or {})
        self.cel = to_cel(dict(self))


@dataclass(frozen=True)
class Identity:
    key_id: str  # first 12 hex digits of the digest: safe to log
    metadata: Metadata = field(default_factory=Metadata)
    allowed_models: tuple[str, ...] | None = None  # globs; None = every model

    def allows(self, model: str) -> bool:
        if self.allowed_models is None:
            return True
        return any(fnmatchcase(model, pattern) for pattern in self.allowed_models)


def identity_of(digest: str, metadata: Mapping[str, Any] | None = None,
                allowed_models: Iterable[str] | None = None) -> Identity:
    return Identity(key_id=digest[:12], metadata=Metadata(metadata),
                    allowed_models=None if allowed_models is None else tuple(allowed_models))


class KeyStore:
    """sha256 hex digest -> Identity."""

    def __init__(self) -> None:
        self._by_digest: dict[str, Identity] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def __contains__(self, digest: str) -> bool:
        return digest in self._by_digest

    def add(self, digest: str, metadata: Mapping[str, Any] | None = None,
            allowed_models: Iterable[str] | None = None) -> Identity:
        """Adds one key by its hex digest; ValueError if the store holds it already."""
        return self.put(digest, identity_of(digest, metadata, allowed_models))

    def put(self, digest: str, identity: Identity) -> Identity:
        if digest in self._by_digest:
            raise ValueError("duplicate API key")
        self._by_digest[digest] = identity
        return identity

    def find(self, key: str) -> Identity | None:
        return self._by_digest.get(key_digest(key))

    def metadata_fields(self) -> set[str]:
        """Every metadata field some key carries."""
        return {name for identity in self._by_digest.values() for name in identity.metadata}


@dataclass(frozen=True)
class ApiKeyPolicy:
    """agentgateway's `apiKey` policy.

    strict: a missing or invalid key is 401. optional: no key passes as anonymous, an
    invalid key is 401. permissive: never refuses; a valid key still identifies.
    """

    mode: Mode
    header_name: str
    prefix: str
    store: KeyStore
    fallback_headers: tuple[str, ...] = ()  # read (without prefix) when header_name is absent

    @classmethod
    def build(cls, spec: ApiKey, store: KeyStore) -> "ApiKeyPolicy":
        """The policy of `spec`, its keys (from `keys:` and keysDir) already in `store`."""
        if spec.location is None:
            return cls(spec.mode, DEFAULT_HEADER, DEFAULT_PREFIX, store, (ANTHROPIC_HEADER,))
        header = spec.location.header.name.lower()
        prefix = spec.location.header.prefix
        if prefix is None:
            prefix = DEFAULT_PREFIX if header == DEFAULT_HEADER else ""
        return cls(spec.mode, header, prefix, store)

    def authenticate(self, headers: Mapping[str, str]) -> Identity | None:
        """`headers` must have a case-insensitive `get` (Starlette's Headers)."""
        key = self._presented_key(headers)
        if key is None:
            if self.mode == "strict":
                raise AuthError(f"missing API key: send it as '{self._expected()}'")
            return None
        identity = self.store.find(key) if key else None
        if identity is not None or self.mode == "permissive":
            return identity
        if not key:
            raise AuthError(f"invalid API key: expected '{self._expected()}'")
        raise AuthError("invalid API key")

    def _presented_key(self, headers: Mapping[str, str]) -> str | None:
        """The key as sent; None if absent; "" if the header lacks the configured prefix."""
        raw = headers.get(self.header_name)
        prefix = self.prefix
        if raw is None:
            prefix = ""
            for name in self.fallback_headers:
                raw = headers.get(name)
                if raw is not None:
                    break
            else:
                return None
        raw = raw.strip()
        if not raw or (prefix and raw.lower() == prefix.strip().lower()):
            return None
        if prefix:
            if raw[:len(prefix)].lower() != prefix.lower():
                return ""
            raw = raw[len(prefix):].strip()
        return raw

    def _expected(self) -> str:
        return f"{self.header_name}: {self.prefix}<key>"
