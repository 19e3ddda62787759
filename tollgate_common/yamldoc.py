"""YAML read into plain data that remembers the line of every key and list item.

Both services report config problems as `file:line: message`, the line being that of the
bad value or its key; PyYAML's own constructor loses lines, so documents are composed
into nodes and walked here. Each service adds its own rules through `TreeReader`'s hooks:
the gateway expands `$VAR`, the rate-limit service checks keys the way envoy does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tollgate_common.problems import Problem

# libyaml when installed: composing is most of a reload's cost.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Path = tuple[Any, ...]  # keys and list indexes from the document's root


class YamlProblem(Exception):
    """A problem at a line of the text (1-based; None when YAML gave no position)."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class Document:
    file: str
    data: Any = None
    lines: dict[Path, int] = field(default_factory=dict)
    start: int = 1  # the document's first line (ConfigMap entries start deep in a file)

    def line(self, loc: Sequence[Any]) -> int:
        """The line of `loc`, or of its nearest ancestor that has one."""
        path = tuple(loc)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.start

    def problem(self, loc: Sequence[Any], message: str) -> Problem:
        return Problem(self.file, self.line(loc), message)


def compose(text: str, offset: int = 0) -> list[Node | None]:
    """The node trees of every document in `text` ([None] for an empty text).

    Raises YamlProblem naming the syntax error; `offset` shifts the lines reported.
    """
    try:
        nodes = list(yaml.compose_all(text, Loader=Loader))
    except yaml.MarkedYAMLError as e:
        raise syntax_problem(e, text, offset) from None
    except yaml.YAMLError as e:
        raise YamlProblem(None, str(e)) from None
    return nodes or [None]


# Problems that are nearly always a line indented too far or not far enough.
_INDENTATION = ("expected key", "expected <block end>", "mapping values are not allowed", "expected '-'")


def syntax_problem(e: yaml.MarkedYAMLError, text: str, offset: int = 0) -> YamlProblem:
    """A syntax error at the line a person fixes, with its column.

    A token the scanner could not finish (a quote never closed, a key without its `:`)
    is reported where the token starts; the scanner only notices at the next line or the
    end of the file. Other problems are reported where they are, naming the block
    they are in."""
    problem, context = e.problem_mark, e.context_mark
    what = str(e.problem or e.context or "invalid YAML")
    if context is not None and e.context and e.context.startswith("while scanning"):
        token = e.context.removeprefix("while scanning ")
        detail = f"{what} in {token} that starts at column {context.column + 1}"
        line = context.line
    elif problem is not None and what.startswith("mapping values are not allowed") and _colonless(text, problem.line):
        line = _colonless(text, problem.line)
        return YamlProblem(offset + line + 1, f"no ':' after {text.splitlines()[line].strip()!r}, so the "
                                              f"next line's key cannot follow it; add the ':' or check the indentation")
    elif problem is not None:
        detail = f"{what} at column {problem.column + 1}"
        if context is not None and e.context:
            detail += f" ({e.context.removeprefix('while parsing ')} that starts at line {offset + context.line + 1})"
        line = problem.line
    else:
        return YamlProblem(None, what)
    if any(hint in what for hint in _INDENTATION):
        detail += "; check the indentation"
    return YamlProblem(offset + line + 1, detail)


def _colonless(text: str, line: int) -> int | None:
    """The line before `line` (0-based, blank lines skipped) when it is a plain word run
    with no ':' — a key whose colon was forgotten, which YAML reads as the start of a
    multi-line scalar and only trips over on the next line."""
    lines = text.splitlines()
    for before in range(min(line, len(lines)) - 1, -1, -1):
        stripped = lines[before].strip()
        if not stripped or stripped.startswith("#"):
            continue
        return before if ":" not in stripped and not stripped.startswith(("-", "[", "{", "'", '"')) else None
    return None


class TreeReader:
    """Walks a node tree into dicts, lists and scalars, filling `doc.lines`.

    Duplicate keys, non-scalar keys and recursive aliases are problems; `<<` merge keys
    are applied. Subclasses refine `key`, `scalar` and `item` (the hooks).
    """

    def __init__(self, doc: Document, offset: int = 0) -> None:
        self.doc = doc
        self.offset = offset
        self._active: set[int] = set()
        # Per reader: a constructor remembers every node it built until it is dropped.
        self._constructor = SafeConstructor()

    def read(self, node: Node) -> Document:
        self.doc.start = self.line_of(node)
        self.doc.data = self.value(node, ())
        return self.doc

    def line_of(self, node: Node) -> int:
        return self.offset + node.start_mark.line + 1

    def value(self, node: Node, path: Path) -> Any:
        if id(node) in self._active:
            raise YamlProblem(self.line_of(node), "recursive alias")
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self.mapping(node, path)
            if isinstance(node, SequenceNode):
                return [self.item(child, path + (i,)) for i, child in enumerate(node.value)]
            return self.scalar(node, path)
        finally:
            self._active.discard(id(node))

    def mapping(self, node: MappingNode, path: Path) -> dict:
        self._constructor.flatten_mapping(node)
        out: dict = {}
        for key_node, value_node in node.value:
            key = self.key(key_node, path)
            line = self.line_of(key_node)
            if key in out:
                first = self.doc.lines.get(path + (key,))
                raise YamlProblem(line, f"duplicate key {key!r} (first at line {first})")
            self.doc.lines[path + (key,)] = line
            out[key] = self.value(value_node, path + (key,))
        return out

    # --- hooks ----------------------------------------------------------------------

    def key(self, node: Node, path: Path) -> Any:
        if not isinstance(node, ScalarNode):
            raise YamlProblem(self.line_of(node), "a mapping key must be a scalar")
        return self._constructor.construct_object(node)

    def item(self, node: Node, path: Path) -> Any:
        self.doc.lines[path] = self.line_of(node)
        return self.value(node, path)

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        return self._constructor.construct_object(node)
