"""YAML (and JSON) documents with the line of every value, and `$VAR` expansion.

Every problem the loader reports is `<file>:<line>: <message>`; the line comes from the
`Document.lines` map, which gives for each path (tuple of keys and indexes) the line of
its key, or of the item for list entries.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[Any, ...]

# `$$` is a literal `$`; `$NAME` and `${NAME}` read the environment, and
# `${NAME:-default}` falls back to the default when NAME is unset or empty (as in
# shells and docker compose), so one file serves compose, Kubernetes and local runs.
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """Invalid configuration; `str()` is one `file:line: message` per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Document:
    file: str
    data: Any = None
    lines: dict[Path, int] = field(default_factory=dict)
    unset_vars: dict[Path, list[str]] = field(default_factory=dict)  # path -> names expanded to ""

    def locate(self, loc: Sequence[Any]) -> Path:
        """The longest prefix of `loc` that exists in the document."""
        node, path = self.data, ()
        for part in loc:
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                break
            path += (part,)
        return path

    def line(self, loc: Sequence[Any]) -> int:
        path = self.locate(loc)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def problem(self, loc: Sequence[Any], message: str) -> Problem:
        return Problem(self.file, self.line(loc), message)

    def unset_under(self, loc: Sequence[Any]) -> list[str]:
        """Unset variables expanded in the value at `loc` (or inside it)."""
        path = self.locate(loc)
        n = len(path)
        return sorted({v for p, names in self.unset_vars.items() if p[:n] == path for v in names})


def parse_yaml(text: str, file: str, expand_env: bool = True) -> Document:
    """Parse one YAML document; raises ConfigError with the line of a syntax error."""
    doc = Document(file)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            doc.data = _Builder(loader, doc, expand_env).build(node, ())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        detail = "; ".join(str(x) for x in (e.context, e.problem) if x)
        raise ConfigError([Problem(file, line, f"YAML syntax error: {detail}")]) from None
    except yaml.YAMLError as e:
        raise ConfigError([Problem(file, 1, f"YAML syntax error: {e}")]) from None
    finally:
        loader.dispose()
    return doc


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


class _Builder:
    """Node tree -> plain data, recording lines; PyYAML's own constructor loses them."""

    def __init__(self, loader: yaml.SafeLoader, doc: Document, expand_env: bool) -> None:
        self.loader = loader
        self.doc = doc
        self.expand_env = expand_env
        self.stack: set[int] = set()

    def build(self, node: yaml.Node, path: Path) -> Any:
        if id(node) in self.stack:
            raise yaml.MarkedYAMLError(problem="recursive alias", problem_mark=node.start_mark)
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return self._sequence(node, path)
            return self._scalar(node, path)
        finally:
            self.stack.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict:
        self.loader.flatten_mapping(node)  # `<<` merge keys
        out: dict = {}
        first_line: dict = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise yaml.MarkedYAMLError(problem="a mapping key must be a scalar", problem_mark=key_node.start_mark)
            if key in out:
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key!r} (first at line {first_line[key]})",
                    problem_mark=key_node.start_mark)
            first_line[key] = line
            self.doc.lines[path + (key,)] = line
            out[key] = self.build(value_node, path + (key,))
        return out

    def _sequence(self, node: yaml.SequenceNode, path: Path) -> list:
        items = []
        for i, item in enumerate(node.value):
            self.doc.lines[path + (i,)] = item.start_mark.line + 1
            items.append(self.build(item, path + (i,)))
        return items

    def _scalar(self, node: yaml.Node, path: Path) -> Any:
        value = self.loader.construct_object(node)
        if self.expand_env and isinstance(value, str):
            unset: list[str] = []
            value = expand(value, unset)
            if unset:
                self.doc.unset_vars[path] = unset
        return value
