"""Virtual key generation for `tollgate keys generate`."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

import yaml

from gateway.policies.apikey import key_digest

KEY_BYTES = 32  # 256 random bits


def new_key(prefix: str = "sk-") -> str:
    return prefix + secrets.token_urlsafe(KEY_BYTES)


def generate_entry(metadata: Mapping[str, str] | None = None, allowed_models: Sequence[str] | None = None,
                   prefix: str = "sk-") -> tuple[str, str]:
    """A new key and the `apiKey.keys[]` YAML entry that stores only its digest."""
    key = new_key(prefix)
    entry: dict = {"keyHash": f"sha256:{key_digest(key)}"}
    if metadata:
        entry["metadata"] = dict(metadata)
    if allowed_models:
        entry["allowedModels"] = list(allowed_models)
    return key, yaml.safe_dump([entry], sort_keys=False, default_flow_style=False)
