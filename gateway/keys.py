"""Virtual key generation for `tollgate keys generate`, and the published demo keys."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from gateway.policies.apikey import key_digest

KEY_BYTES = 32  # 256 random bits

# sha256 of the demo's keys (deploy/gateway/keys/: sk-alice-abc123def456, sk-bob-xyz789uvw012,
# sk-mike-key). They are in the repository, so anyone can use them: with
# TOLLGATE_REFUSE_DEMO_KEYS=1 (set by deploy/compose/real-providers.yml) a config holding
# one does not load, so a stack switched to real providers refuses to start with them.
DEMO_KEY_DIGESTS = frozenset({
    "477fe4bee6e6d46cc4fa5827b4c375f045b01701de265deea7c26a74d4f86d1f",
    "b2bd46e01122f51b540cc49cfdd020484776e67f5d3966c099e689eac4b8d93e",
    "291e302b85db9ca05bb0e321664e5ad677ded679207483793f2571139ac0760d",
})


def refuse_demo_keys() -> bool:
    return os.environ.get("TOLLGATE_REFUSE_DEMO_KEYS", "") not in ("", "0", "false")


def new_key(prefix: str = "sk-") -> str:
    return prefix + secrets.token_urlsafe(KEY_BYTES)


def generate_entry(metadata: Mapping[str, str] | None = None, allowed_models: Sequence[str] | None = None,
                   prefix: str = "sk-") -> tuple[str, dict]:
    """A new key and the key entry that stores only its digest."""
    key = new_key(prefix)
    entry: dict = {"keyHash": f"sha256:{key_digest(key)}"}
    if metadata:
        entry["metadata"] = dict(metadata)
    if allowed_models:
        entry["allowedModels"] = list(allowed_models)
    return key, entry


def as_yaml(entry: dict) -> str:
    """The entry as an item of `apiKey.keys`."""
    return yaml.safe_dump([entry], sort_keys=False, default_flow_style=False)


def write_key_file(directory: Path, name: str, entry: dict) -> Path:
    """The entry as a keysDir file, `directory/name`, which must not exist yet.

    Written to a dot-file first (keysDir skips those) and linked into place, so a
    running gateway never reads half a file, and an existing key is never replaced."""
    if not name or name.startswith(".") or "/" in name or name != name.strip():
        raise ValueError(f"--name {name!r}: a file name, not starting with a dot")
    target = directory / name
    partial = directory / f".{name}.{secrets.token_hex(4)}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the digest is not secret; tidy anyway
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(entry, indent=2) + "\n")
        os.link(partial, target)  # FileExistsError rather than overwrite
    finally:
        partial.unlink()
    return target
