"""The bounds of a client's JSON: parsing, nesting, text, and the type and range of each field.

Every field the gateway reads, translates or forwards is checked here once, at parse
time, so a malformed request is a 400 naming the field instead of an exception deep in
translation, token counting or re-encoding (a 500), and a number no model accepts
(`max_tokens: 18446744073709551616`) never reaches budgets or the rate-limit service.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.llm.request import BadRequest

# Real requests nest a few levels (tool JSON schemas perhaps 20); 64 leaves room while
# keeping every recursive walk over the body (token counts, translation, re-encoding)
# far below Python's recursion limit of 1,000.
MAX_DEPTH = 64
INT32 = 2**31 - 1  # no model's token or count parameter comes near it
INT64 = 2**63 - 1
# A UTF-16 surrogate written as a JSON escape (`\ud800`): only valid in pairs.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

Check = Callable[[str, Any], None]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf, which JSON cannot carry upstream
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def loads(raw: bytes | str, what: str = "request body") -> Any:
    """The client's JSON; BadRequest for anything that is not strict, finite JSON within
    MAX_DEPTH levels, or whose text holds a lone surrogate (not encodable as UTF-8)."""
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise BadRequest(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"{what} is not valid JSON: {e}") from None
    # The walk is skipped unless a cheap scan of the bytes says it could fail: it needs
    # more than MAX_DEPTH opening brackets, or a surrogate escape.
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH or _SURROGATE_ESCAPE.search(data):
        _check_tree(body, what)
    return body


def _check_tree(body: Any, what: str) -> None:
    stack: list[tuple[Any, str, int]] = [(body, what, 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            _text(path, value)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            raise BadRequest(f"{path} is nested deeper than {MAX_DEPTH} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                _text(path, key)
            where = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path != what else key)
            stack.append((item, where, depth + 1))


def _text(path: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{path} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text") from None


# --- field checks: each takes (name, value) and raises BadRequest naming the field ------

def integer(low: int, high: int) -> Check:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BadRequest(f"'{name}' must be an integer from {low} to {high}")
    return check


def number(low: float, high: float) -> Check:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise BadRequest(f"'{name}' must be a number from {low:g} to {high:g}")
    return check


def of_type(*types: type, what: str) -> Check:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise BadRequest(f"'{name}' must be {what}")
    return check


def strings(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"'{name}' must be an array of strings")


def string_or_strings(name: str, value: Any) -> None:
    if not isinstance(value, str) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise BadRequest(f"'{name}' must be a string or an array of strings")


def objects(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise BadRequest(f"'{name}' must be an array of objects")


BOOLEAN = of_type(bool, what="a boolean")
STRING = of_type(str, what="a string")
OBJECT = of_type(dict, what="an object")
STRING_OR_OBJECT = of_type(str, dict, what="a string or an object")


def check_fields(body: Mapping[str, Any], fields: Mapping[str, Check], prefix: str = "") -> None:
    """Checks every field of `fields` that `body` sets (null counts as unset)."""
    for name, check in fields.items():
        value = body.get(name)
        if value is not None:
            check(prefix + name, value)


def content_parts(where: str, content: Any) -> None:
    """A message's content: a string, or an array of objects that each name their `type`."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or an array")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise BadRequest(f"{where}.content[{j}] must be an object with a string 'type'")
