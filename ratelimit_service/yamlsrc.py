"""Domain YAML documents read with the line of every value.

A file holds envoy's domain format, or a Kubernetes ConfigMap manifest whose
`data` entries named `*.yaml`/`*.yml` hold it (the way it is mounted). Keys are
checked the way envoyproxy/ratelimit checks them (any known key at any depth,
leaves string, int, bool or null), with its messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

VALID_KEYS = frozenset({
    "domain", "key", "value", "descriptors", "rate_limit", "unit", "requests_per_unit",
    "unlimited", "shadow_mode", "name", "replaces", "detailed_metric", "share_threshold",
    "algorithm", "usd", "timezone",
})
# Envoy unmarshals these into Go strings, which take any scalar's text as written.
STRING_KEYS = frozenset({"domain", "key", "value", "unit", "name", "algorithm", "timezone"})
STR_TAG = "tag:yaml.org,2002:str"
LEAF_TAGS = frozenset({
    STR_TAG, "tag:yaml.org,2002:int", "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null", "tag:yaml.org,2002:timestamp",
})
CONFIG_SUFFIXES = (".yaml", ".yml")

Path = tuple[str | int, ...]


class YamlProblem(Exception):
    """A problem at a line of the file (1-based; None if unknown)."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class Document:
    """One domain document: plain data, and the line of each path in it."""

    data: Any
    lines: dict[Path, int]
    line: int  # where the document starts

    def line_of(self, path: Path) -> int:
        """The line of `path`, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.line


def documents(text: str) -> Iterator[Document]:
    """The domain documents of one file, ConfigMap manifests unwrapped."""
    for node in _compose(text, 0):
        if node is None:
            yield Document(None, {}, 1)  # an empty file: envoy reports the empty domain
        elif _is_configmap(node):
            yield from _configmap_documents(node)
        else:
            yield _document(node)


def _compose(text: str, offset: int) -> list[Node | None]:
    try:
        nodes = list(yaml.compose_all(text, Loader=Loader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = offset + mark.line + 1 if mark else None
        raise YamlProblem(line, f"error loading config file: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise YamlProblem(None, f"error loading config file: {e}") from None
    return nodes or [None]


def _is_configmap(node: Node) -> bool:
    if not isinstance(node, MappingNode):
        return False
    fields = {k.value: v for k, v in node.value if isinstance(k, ScalarNode)}
    kind = fields.get("kind")
    return "apiVersion" in fields and isinstance(kind, ScalarNode) and kind.value == "ConfigMap"


def _configmap_documents(node: MappingNode) -> Iterator[Document]:
    data = next((v for k, v in node.value if k.value == "data"), None)
    if data is None or (isinstance(data, ScalarNode) and data.tag == "tag:yaml.org,2002:null"):
        return
    if not isinstance(data, MappingNode):
        raise YamlProblem(data.start_mark.line + 1, "ConfigMap data must be a map of file names to YAML text")
    for name_node, value in data.value:
        if not str(name_node.value).endswith(CONFIG_SUFFIXES):
            continue
        if not isinstance(value, ScalarNode):
            raise YamlProblem(value.start_mark.line + 1, f"ConfigMap data '{name_node.value}' must be a string")
        # A block scalar's text starts on the line after its `|` indicator.
        offset = value.start_mark.line + (1 if value.style in ("|", ">") else 0)
        for inner in _compose(value.value, offset):
            if inner is None:
                yield Document(None, {}, offset + 1)
            else:
                yield _document(inner, offset)


def _document(node: Node, offset: int = 0) -> Document:
    if not isinstance(node, MappingNode):
        raise YamlProblem(offset + node.start_mark.line + 1, "error loading config file: the document is not a map")
    lines: dict[Path, int] = {}
    data = _walk_map(node, (), lines, offset)
    return Document(data, lines, offset + node.start_mark.line + 1)


def _walk_map(node: MappingNode, path: Path, lines: dict[Path, int], offset: int) -> dict:
    out: dict[str, Any] = {}
    lines[path] = offset + node.start_mark.line + 1
    for key_node, value_node in node.value:
        line = offset + key_node.start_mark.line + 1
        if not isinstance(key_node, ScalarNode) or key_node.tag != STR_TAG:
            raise YamlProblem(line, f"config error, key is not of type string: {_text(key_node)}")
        key = key_node.value
        if key not in VALID_KEYS:
            raise YamlProblem(line, f"config error, unknown key '{key}'")
        value = _walk_value(value_node, path + (key,), lines, offset, key in STRING_KEYS)
        lines[path + (key,)] = line
        if value is not None:  # as in Go, a null leaves the field at its zero value
            out[key] = value
    return out


def _walk_value(node: Node, path: Path, lines: dict[Path, int], offset: int, as_text: bool) -> Any:
    if isinstance(node, MappingNode):
        return _walk_map(node, path, lines, offset)
    if isinstance(node, SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            if not isinstance(item, MappingNode):
                raise YamlProblem(
                    offset + item.start_mark.line + 1,
                    f"config error, yaml file contains list of type other than map: {_text(item)}",
                )
            items.append(_walk_map(item, path + (i,), lines, offset))
        return items
    if node.tag not in LEAF_TAGS:
        raise YamlProblem(offset + node.start_mark.line + 1, "error checking config")
    if node.tag == "tag:yaml.org,2002:null":
        return None
    if as_text or node.tag == "tag:yaml.org,2002:timestamp":
        return node.value
    return SafeConstructor().construct_object(node)


def _text(node: Node) -> str:
    return node.value if isinstance(node, ScalarNode) else f"<{node.id}>"
