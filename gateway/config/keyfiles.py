"""keysDir: one JSON file per virtual key (a mounted Kubernetes Secret), read only when changed.

Reading a key file means JSON, the apiKey schema, a sha256 and the metadata's CEL form:
~60 µs a file, 0.6 s for 10,000 keys, on every reload. A reload reads again only the
files whose (device, inode, size, mtime) changed; the others cost one stat each, so an
added, changed or removed key among 10,000 takes effect well within a second.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from gateway.config.source import ConfigError, EnvDocument, Problem, parse_yaml
from gateway.config.validate import validate
from gateway.policies.apikey import Identity, KeyEntry, identity_of

MAX_KEY_FILE = 64 * 1024  # a key file is a few hundred bytes; refuse to read a stray blob


@dataclass(frozen=True, slots=True)
class KeyFile:
    path: str
    digest: str
    identity: Identity


# path -> (stamp, what it held): the files of the last read of each keysDir
_read_before: dict[str, tuple[tuple, KeyFile]] = {}


def read_keys_dir(directory: Path) -> tuple[list[KeyFile], list[Problem]]:
    """Every key file in `directory` (dot entries such as a Secret's `..data` skipped,
    symlinks followed), and the problems of the files that are not valid keys."""
    keys: list[KeyFile] = []
    problems: list[Problem] = []
    entries = sorted(os.scandir(directory), key=lambda e: e.name)
    _forget_removed(directory, {os.path.join(directory, e.name) for e in entries})
    for entry in entries:
        path = os.path.join(directory, entry.name)
        try:
            if entry.name.startswith(".") or not entry.is_file():  # follows symlinks
                continue
            st = os.stat(path)
        except OSError:
            continue
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        known = _read_before.get(path)
        if known is not None and known[0] == stamp:
            keys.append(known[1])
            continue
        try:
            entry_ = read_key_file(Path(path))
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        key = KeyFile(path, entry_.digest, identity_of(entry_.digest, entry_.metadata, entry_.allowed_models))
        _read_before[path] = (stamp, key)
        keys.append(key)
    return keys, problems


def _forget_removed(directory: Path, present: set[str]) -> None:
    prefix = os.path.join(directory, "")
    for path in [p for p in _read_before if p.startswith(prefix) and p not in present]:
        del _read_before[path]


def read_key_file(path: Path) -> KeyEntry:
    """One keysDir file: `{"key" | "keyHash", "metadata"?, "allowedModels"?}` as JSON."""
    file = str(path)
    text = read_text(path, MAX_KEY_FILE)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError([Problem(file, e.lineno, f"invalid JSON: {e.msg}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, 1, 'a key file must hold a JSON object like {"key": "...", "metadata": {}}')])
    try:
        return KeyEntry.model_validate(data)
    except ValidationError:
        pass
    try:  # only to name the lines of the problems: JSON is YAML
        doc = parse_yaml(text, file, expand_env=False)
    except ConfigError:
        doc = EnvDocument(file)
    doc.data = data
    return validate(doc, KeyEntry)


def read_text(path: Path, limit: int | None = None) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(limit + 1 if limit else -1)
    except OSError as e:
        # No line: the file has none to point at ("nope.yaml: cannot read: No such file or directory").
        raise ConfigError([Problem(str(path), None, f"cannot read: {e.strerror or e}")]) from None
    if limit and len(raw) > limit:
        raise ConfigError([Problem(str(path), 1, f"file is larger than {limit} bytes")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError([Problem(str(path), line, "file is not valid UTF-8")]) from None
