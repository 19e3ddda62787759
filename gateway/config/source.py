"""The gateway's config text: one YAML (or JSON) document with lines, and `$VAR` expansion.

Every problem the loader reports is `<file>:<line>: <message>`; the line comes from the
document's line map (tollgate_common.yamldoc), which gives for each path (keys and
indexes) the line of its key, or of the item for list entries.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from yaml.nodes import ScalarNode

from tollgate_common.problems import ConfigError, Problem
from tollgate_common.yamldoc import Document, Path, TreeReader, YamlProblem, compose

__all__ = ["ConfigError", "EnvDocument", "Problem", "expand", "parse_yaml"]

# `$$` is a literal `$`; `$NAME` and `${NAME}` read the environment, and
# `${NAME:-default}` falls back to the default when NAME is unset or empty (as in
# shells and docker compose), so one file serves compose, Kubernetes and local runs.
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class EnvDocument(Document):
    """A Document whose strings had `$VAR` expanded; records which variables were expanded
    where (a problem names them instead of showing their values: they may be secrets)."""

    unset_vars: dict[Path, list[str]] = field(default_factory=dict)  # path -> names expanded to ""
    env_vars: dict[Path, list[str]] = field(default_factory=dict)  # path -> every name expanded

    def unset_under(self, loc: Sequence[Any]) -> list[str]:
        """Unset variables expanded in the value at `loc` (or inside it)."""
        return _under(self.unset_vars, loc)

    def vars_under(self, loc: Sequence[Any]) -> list[str]:
        """Variables expanded in the value at `loc` (or inside it)."""
        return _under(self.env_vars, loc)

    def redact(self, loc: Sequence[Any], text: str) -> str:
        """`text` without any value that `$VAR` expansion produced at or under `loc`: a
        message quoting its input (`expected host:port, got '...'`) would print a secret
        that came from the environment. The variables are named instead."""
        path = tuple(loc)
        for where, names in self.env_vars.items():
            if where[:len(path)] != path:
                continue
            value = self.value_at(where)
            if isinstance(value, str) and value.strip():
                shown = "the value of " + ", ".join(f"${n}" for n in names)
                text = text.replace(repr(value), shown).replace(value, shown)
        return text

    def value_at(self, loc: Sequence[Any]) -> Any:
        value = self.data
        for part in loc:
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                return None
        return value


def _under(found: dict[Path, list[str]], loc: Sequence[Any]) -> list[str]:
    path = tuple(loc)
    n = len(path)
    return sorted({v for p, names in found.items() if p[:n] == path for v in names})


def parse_yaml(text: str, file: str, expand_env: bool = True) -> EnvDocument:
    """Parse one YAML document; raises ConfigError with the line of a syntax error."""
    doc = EnvDocument(file)
    try:
        nodes = compose(text)
        if len(nodes) > 1:
            raise YamlProblem(nodes[1].start_mark.line + 1, "expected one document, found several")
        if nodes[0] is not None:
            _EnvReader(doc, expand_env).read(nodes[0])
    except YamlProblem as e:
        raise ConfigError([Problem(file, e.line or 1, f"YAML syntax error: {e.message}")]) from None
    return doc


class _EnvReader(TreeReader):
    def __init__(self, doc: EnvDocument, expand_env: bool) -> None:
        super().__init__(doc)
        self.expand_env = expand_env

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        value = super().scalar(node, path)
        if self.expand_env and isinstance(value, str) and "$" in value:
            unset: list[str] = []
            used: list[str] = []
            value = expand(value, unset, used)
            if unset:
                self.doc.unset_vars[path] = unset
            if used:
                self.doc.env_vars[path] = used
        return value


def expand(value: str, unset: list[str], used: list[str] | None = None) -> str:
    """Expand `$VAR` / `${VAR}`; an unset variable becomes "" and is appended to `unset`;
    every variable named is appended to `used`."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name is None:
            return "$"
        if used is not None:
            used.append(name)
        got = os.environ.get(name)
        if m.group(2) is not None and not got:
            return m.group(2)
        if got is None:
            unset.append(name)
            return ""
        return got

    return _VAR.sub(sub, value) if "$" in value else value
