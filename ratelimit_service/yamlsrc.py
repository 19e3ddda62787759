"""Domain YAML documents read with the line of every value.

A file holds envoy's domain format, or a Kubernetes ConfigMap manifest whose
`data` entries named `*.yaml`/`*.yml` hold it (the way it is mounted). Keys are
checked the way envoyproxy/ratelimit checks them (any known key at any depth,
leaves string, int, bool or null), with its messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from tollgate_common.yamldoc import Document, Path, TreeReader, YamlProblem, compose

__all__ = ["CONFIG_SUFFIXES", "Document", "YamlProblem", "documents"]

VALID_KEYS = frozenset({
    "domain", "key", "value", "descriptors", "rate_limit", "unit", "requests_per_unit",
    "unlimited", "shadow_mode", "name", "replaces", "detailed_metric", "share_threshold",
    "algorithm", "usd", "timezone",
})
# Envoy unmarshals these into Go strings, which take any scalar's text as written.
STRING_KEYS = frozenset({"domain", "key", "value", "unit", "name", "algorithm", "timezone"})
STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
FLOAT_TAG = "tag:yaml.org,2002:float"
LEAF_TAGS = frozenset({STR_TAG, "tag:yaml.org,2002:int", "tag:yaml.org,2002:bool", NULL_TAG, TIMESTAMP_TAG})
# Tollgate's one decimal field: dollars, read as written (49.99 stays exact, not a binary float).
DECIMAL_KEYS = frozenset({"usd"})
CONFIG_SUFFIXES = (".yaml", ".yml")


def documents(text: str, file: str = "") -> Iterator[Document]:
    """The domain documents of one file, ConfigMap manifests unwrapped."""
    for node in _compose(text, 0):
        if node is None:
            yield Document(file)  # an empty file: envoy reports the empty domain
        elif _is_configmap(node):
            yield from _configmap_documents(node, file)
        else:
            yield _document(node, file)


def _compose(text: str, offset: int) -> list[Node | None]:
    try:
        return compose(text, offset)
    except YamlProblem as e:
        raise YamlProblem(e.line, f"error loading config file: {e.message}") from None


def _is_configmap(node: Node) -> bool:
    if not isinstance(node, MappingNode):
        return False
    fields = {k.value: v for k, v in node.value if isinstance(k, ScalarNode)}
    kind = fields.get("kind")
    return "apiVersion" in fields and isinstance(kind, ScalarNode) and kind.value == "ConfigMap"


def _configmap_documents(node: MappingNode, file: str) -> Iterator[Document]:
    data = next((v for k, v in node.value if k.value == "data"), None)
    if data is None or (isinstance(data, ScalarNode) and data.tag == NULL_TAG):
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
            yield Document(file, start=offset + 1) if inner is None else _document(inner, file, offset)


def _document(node: Node, file: str, offset: int = 0) -> Document:
    if not isinstance(node, MappingNode):
        raise YamlProblem(offset + node.start_mark.line + 1, "error loading config file: the document is not a map")
    return _EnvoyReader(Document(file), offset).read(node)


class _EnvoyReader(TreeReader):
    """envoy's rules: known string keys, lists of maps, scalar leaves; a null is the zero value."""

    def mapping(self, node: MappingNode, path: Path) -> dict:
        self.doc.lines.setdefault(path, self.line_of(node))  # a key's own line wins
        # As in Go, a null leaves the field at its zero value.
        return {k: v for k, v in super().mapping(node, path).items() if v is not None}

    def key(self, node: Node, path: Path) -> Any:
        if not isinstance(node, ScalarNode) or node.tag != STR_TAG:
            raise YamlProblem(self.line_of(node), f"config error, key is not of type string: {_text(node)}")
        if node.value not in VALID_KEYS:
            raise YamlProblem(self.line_of(node), f"config error, unknown key '{node.value}'")
        return node.value

    def item(self, node: Node, path: Path) -> Any:
        if not isinstance(node, MappingNode):
            raise YamlProblem(self.line_of(node),
                              f"config error, yaml file contains list of type other than map: {_text(node)}")
        return self.value(node, path)

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        if node.tag == FLOAT_TAG and path[-1] in DECIMAL_KEYS:
            return node.value
        if node.tag not in LEAF_TAGS:
            raise YamlProblem(self.line_of(node), "error checking config")
        if node.tag == NULL_TAG:
            return None
        if path[-1] in STRING_KEYS or node.tag == TIMESTAMP_TAG:
            return node.value
        return super().scalar(node, path)


def _text(node: Node) -> str:
    return node.value if isinstance(node, ScalarNode) else f"<{node.id}>"
