"""Request parsing and reply shapes: envoy's /json (protojson) and the reserve/settle API.

Requests follow protojson's rules for envoy's RateLimitRequest: fields by their
proto or JSON name (`hits_addend` or `hitsAddend`), numbers as JSON numbers or
strings, null as unset, and an unknown field is an error. Replies use protojson
shapes: upper-case enum names, zero values omitted, durations as "37s".
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from ratelimit_service.limiter import JSON, RESERVE, SETTLE
from ratelimit_service.match import UNIT_NUMBERS, UNIT_SECONDS

MAX_UINT32 = 2**32 - 1
MAX_UINT64 = 2**64 - 1
MAX_INT64 = 2**63 - 1

__all__ = [
    "JSON", "RESERVE", "SETTLE", "BadRequest", "Descriptor", "Request", "decode", "parse_document", "render",
]

_REQUEST_FIELDS = frozenset({"domain", "descriptors", "hits_addend", "hitsAddend"})
_DESCRIPTOR_FIELDS = frozenset({"entries", "limit", "hits_addend", "hitsAddend"})
_ELASTIC_FIELDS = _DESCRIPTOR_FIELDS | {"max_hits", "maxHits"}
_ENTRY_FIELDS = frozenset({"key", "value"})
_PLAIN_REQUEST = frozenset({"domain", "descriptors", "hits_addend"})
_PLAIN_DESCRIPTOR = frozenset({"entries", "hits_addend"})
_PLAIN_ELASTIC = _PLAIN_DESCRIPTOR | {"max_hits"}
_LIMIT_FIELDS = frozenset({"requests_per_unit", "requestsPerUnit", "unit"})
_UNIT_NAMES = {number: name for name, number in UNIT_NUMBERS.items()}


class BadRequest(Exception):
    """A malformed request: HTTP 400 with this message."""


@dataclass(slots=True)
class Descriptor:
    entries: tuple[tuple[str, str], ...]
    hits: int | None  # the descriptor's own hits_addend, if set (0 is check-only)
    limit: tuple[int, str] | None  # a limit override: (requests_per_unit, unit name)
    max_hits: int | None  # reserve only: makes the descriptor elastic


@dataclass(slots=True)
class Request:
    domain: str
    descriptors: list[Descriptor]
    hits: int  # the request's hits_addend; 0 or unset counts as 1


def decode(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"invalid JSON: {e}") from None


def parse_document(doc, api: str) -> Request:
    """A decoded request body: the single calls' bodies and the batch's items alike."""
    return _plain(doc, api) or _checked(doc, api)


def _plain(doc, api: str) -> Request | None:
    """The request if it has the shape clients send (proto field names, integers as
    JSON numbers, entries with both key and value), else None. Gives exactly what
    _checked would, much faster; everything else is left to _checked and its messages.
    """
    if type(doc) is not dict or not doc.keys() <= _PLAIN_REQUEST or type(domain := doc.get("domain")) is not str:
        return None
    signed = api == SETTLE
    hits = doc.get("hits_addend")
    if hits is not None and not _plain_int(hits, MAX_UINT32, signed):
        return None
    items = doc.get("descriptors")
    if type(items) is not list or not items or not domain:
        return None
    allowed = _PLAIN_ELASTIC if api == RESERVE else _PLAIN_DESCRIPTOR
    descriptors = []
    for item in items:
        if type(item) is not dict or not item.keys() <= allowed or type(raw_entries := item.get("entries")) is not list:
            return None
        entries = []
        for entry in raw_entries:
            if type(entry) is not dict or len(entry) != 2 or not entry.keys() <= _ENTRY_FIELDS:
                return None
            key, value = entry["key"], entry["value"]
            if type(key) is not str or type(value) is not str:
                return None
            entries.append((key, value))
        d_hits = item.get("hits_addend")
        max_hits = item.get("max_hits")
        if d_hits is not None and not _plain_int(d_hits, MAX_UINT64, signed):
            return None
        if max_hits is not None and not _plain_int(max_hits, MAX_INT64, False):
            return None
        descriptors.append(Descriptor(tuple(entries), d_hits, None, max_hits))
    return Request(domain, descriptors, hits or 1)


def _plain_int(value, largest: int, signed: bool) -> bool:
    return type(value) is int and (-largest if signed else 0) <= value <= largest


def _checked(doc, api: str) -> Request:
    """Any request, with protojson's every rule, and the message naming what is wrong."""
    if type(doc) is not dict:
        raise BadRequest("the request must be a JSON object")
    _check_fields(doc, _REQUEST_FIELDS, "")
    domain = _string(doc.get("domain"), "domain")
    hits = _number(_either(doc, "hits_addend", "hitsAddend"), "hits_addend", MAX_UINT32, signed=api == SETTLE)
    items = doc.get("descriptors")
    if items is None:
        items = []
    elif type(items) is not list:
        raise BadRequest("descriptors: expected a list")
    descriptors = [_descriptor(item, f"descriptors[{i}]", api) for i, item in enumerate(items)]
    # envoy's own checks, after the request has been unmarshalled.
    if not domain:
        raise BadRequest("rate limit domain must not be empty")
    if not descriptors:
        raise BadRequest("rate limit descriptor list must not be empty")
    return Request(domain, descriptors, hits or 1)


def _descriptor(item, path: str, api: str) -> Descriptor:
    if type(item) is not dict:
        raise BadRequest(f"{path}: expected an object")
    _check_fields(item, _ELASTIC_FIELDS if api == RESERVE else _DESCRIPTOR_FIELDS, path + ".")
    raw_entries = item.get("entries")
    if raw_entries is None:
        raw_entries = []
    elif type(raw_entries) is not list:
        raise BadRequest(f"{path}.entries: expected a list")
    entries = tuple(_entry(e, f"{path}.entries[{i}]") for i, e in enumerate(raw_entries))
    hits = _number(_either(item, "hits_addend", "hitsAddend"), f"{path}.hits_addend", MAX_UINT64, signed=api == SETTLE)
    max_hits = _number(_either(item, "max_hits", "maxHits"), f"{path}.max_hits", MAX_INT64)
    limit = item.get("limit")
    return Descriptor(entries, hits, None if limit is None else _limit(limit, f"{path}.limit"), max_hits)


def _entry(entry, path: str) -> tuple[str, str]:
    if type(entry) is not dict:
        raise BadRequest(f"{path}: expected an object")
    _check_fields(entry, _ENTRY_FIELDS, path + ".")
    return _string(entry.get("key"), f"{path}.key"), _string(entry.get("value"), f"{path}.value")


def _limit(limit, path: str) -> tuple[int, str]:
    if type(limit) is not dict:
        raise BadRequest(f"{path}: expected an object")
    _check_fields(limit, _LIMIT_FIELDS, path + ".")
    rpu = _number(_either(limit, "requests_per_unit", "requestsPerUnit"), f"{path}.requests_per_unit", MAX_UINT32)
    unit = limit.get("unit")
    if type(unit) is int:
        unit = _UNIT_NAMES.get(unit, unit)
    if type(unit) is not str or unit not in UNIT_SECONDS:
        raise BadRequest(f"{path}.unit: invalid rate limit unit {orjson.dumps(unit).decode()}")
    return rpu or 0, unit


def _check_fields(obj: dict, allowed: frozenset, path: str) -> None:
    if not obj.keys() <= allowed:
        unknown = next(k for k in obj if k not in allowed)
        raise BadRequest(f'{path}unknown field "{unknown}"')


def _either(obj: dict, proto_name: str, json_name: str):
    value = obj.get(proto_name)
    other = obj.get(json_name)
    if other is None:
        return value
    if value is not None:
        raise BadRequest(f'duplicate field "{json_name}"')
    return other


def _string(value, path: str) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        raise BadRequest(f"{path}: expected a string")
    return value


def _number(value, path: str, largest: int, signed: bool = False) -> int | None:
    """An integer field; negative only where signed (settle's adjustments)."""
    if value is None:
        return None
    if type(value) is int:
        number = value
    elif type(value) is float and value.is_integer():
        number = int(value)
    elif type(value) is str:
        try:
            number = int(value)
        except ValueError:
            raise BadRequest(f"{path}: expected an integer, got {orjson.dumps(value).decode()}") from None
    else:
        raise BadRequest(f"{path}: expected an integer")
    smallest = -largest if signed else 0
    if not smallest <= number <= largest:
        raise BadRequest(f"{path}: {number} is out of range [{smallest}, {largest}]")
    return number


def duration(ms: int) -> str:
    """A protojson Duration in whole seconds, rounded up."""
    return f"{-(-ms // 1000)}s"


OK_STATUS = {"code": "OK"}
UNLIMITED_STATUS = {"code": "OK", "limitRemaining": MAX_UINT32}


def render(body: dict) -> bytes:
    return orjson.dumps(body)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
