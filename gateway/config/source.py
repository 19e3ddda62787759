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
    """A Document whose strings had `$VAR` expanded; records the variables that were unset."""

    unset_vars: dict[Path, list[str]] = field(default_factory=dict)  # path -> names expanded to ""

    def unset_under(self, loc: Sequence[Any]) -> list[str]:
        """Unset variables expanded in the value at `loc` (or inside it)."""
        path = tuple(loc)
        n = len(path)
        return sorted({v for p, names in self.unset_vars.items() if p[:n] == path for v in names})


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
            value = expand(value, unset)
            if unset:
                self.doc.unset_vars[path] = unset
        return value


def expand(value: str, unset: list[str]) -> str:
    """Expand `$VAR` / `${VAR}`; an unset variable becomes "" and is appended to `unset`."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name is None:
            return "$"
        got = os.environ.get(name)
        if m.group(2) is not None and not got:
            return m.group(2)
        if got is None:
            unset.append(name)
            return ""
        return got

    return _VAR.sub(sub, value) if "$" in value else value
