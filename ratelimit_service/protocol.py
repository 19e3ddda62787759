"""Request parsing: envoy's /json (protojson) and Tollgate's /v1 reserve, settle, extend and budget.

Requests follow protojson's rules for envoy's RateLimitRequest: fields by their
proto or JSON name (`hits_addend` or `hitsAddend`), numbers as JSON numbers or
strings, null as unset, and an unknown field is an error. Each /v1 operation
takes the fields below (docs/ratelimit.md); anything else is a 400 naming it.
Every number is checked against what the scripts hold exactly (2^53, Lua's
doubles) before it gets anywhere near Redis. Reply shapes are in replies.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from ratelimit_service.limiter import (
    BUDGET, DEFAULT_LEASE_MS, EXTEND, JSON, MAX_GRANT, MAX_HITS, MAX_LEASE_MS, MAX_PER_GRANT, RESERVE, SETTLE,
)
from ratelimit_service.match import UNIT_NUMBERS, UNIT_SECONDS

MAX_UINT32 = 2**32 - 1

__all__ = [
    "BUDGET", "EXTEND", "JSON", "RESERVE", "SETTLE", "BadRequest", "Descriptor", "Request", "decode",
    "parse_document",
]

_ENVOY_FIELDS = frozenset({"domain", "descriptors", "hits_addend", "hitsAddend"})
_RESERVATION_FIELDS = frozenset({"id", "lease_ms", "leaseMs"})
_GRANT_FIELDS = frozenset({"max_grant", "maxGrant", "min_grant", "minGrant"})
REQUEST_FIELDS = {
    JSON: _ENVOY_FIELDS,
    RESERVE: _ENVOY_FIELDS | _RESERVATION_FIELDS | _GRANT_FIELDS,
    SETTLE: _ENVOY_FIELDS | {"id"},
    BUDGET: frozenset({"domain", "descriptors"}),
    EXTEND: _RESERVATION_FIELDS,
}
_LIMIT_DESCRIPTOR = frozenset({"entries", "limit"})
DESCRIPTOR_FIELDS = {
    JSON: _LIMIT_DESCRIPTOR | {"hits_addend", "hitsAddend"},
    RESERVE: _LIMIT_DESCRIPTOR | {"hits_addend", "hitsAddend", "per_grant", "perGrant"},
    SETTLE: _LIMIT_DESCRIPTOR | {"hits_addend", "hitsAddend"},
    BUDGET: _LIMIT_DESCRIPTOR,
}
# The shapes clients send, taken by the fast path: proto names, integers as numbers.
_PLAIN_REQUEST = {
    JSON: frozenset({"domain", "descriptors", "hits_addend"}),
    RESERVE: frozenset({"domain", "descriptors", "hits_addend", "id", "lease_ms", "max_grant", "min_grant"}),
    SETTLE: frozenset({"domain", "descriptors", "hits_addend", "id"}),
}
_PLAIN_DESCRIPTOR = {
    JSON: frozenset({"entries", "hits_addend"}),
    RESERVE: frozenset({"entries", "hits_addend", "per_grant"}),
    SETTLE: frozenset({"entries", "hits_addend"}),
}
_ENTRY_FIELDS = frozenset({"key", "value"})
_LIMIT_FIELDS = frozenset({"requests_per_unit", "requestsPerUnit", "unit"})
_UNIT_NAMES = {number: name for name, number in UNIT_NUMBERS.items()}
# Reservation ids become part of a Redis key: a short, plain alphabet.
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class BadRequest(Exception):
    """A malformed request: HTTP 400 with this message."""


@dataclass(slots=True)
class Descriptor:
    entries: tuple[tuple[str, str], ...]
    hits: int | None  # the descriptor's own hits_addend, if set (0 is check-only)
    limit: tuple[int, str] | None  # a limit override: (requests_per_unit, unit name)
    per_grant: float | None = None  # reserve only: makes the descriptor elastic


@dataclass(slots=True)
class Request:
    domain: str
    descriptors: list[Descriptor]
    hits: int  # the request's hits_addend; 0 or unset counts as 1
    id: str = ""  # reserve, settle, extend: the reservation
    lease_ms: int = DEFAULT_LEASE_MS
    max_grant: int = MAX_GRANT
    min_grant: int = 1


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
    allowed = _PLAIN_REQUEST.get(api)
    if (allowed is None or type(doc) is not dict or not doc.keys() <= allowed
            or type(domain := doc.get("domain")) is not str):
        return None
    hits = doc.get("hits_addend")
    if hits is not None and not _plain_int(hits, 0, MAX_UINT32):
        return None
    items = doc.get("descriptors")
    if type(items) is not list or not items or not domain:
        return None
    request = Request(domain, [], hits or 1)
    if api != JSON and not _plain_reservation(doc, request):
        return None
    allowed = _PLAIN_DESCRIPTOR[api]
    descriptors = request.descriptors
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
        if d_hits is not None and not _plain_int(d_hits, 0, MAX_HITS):
            return None
        per_grant = item.get("per_grant")
        if per_grant is not None and not (type(per_grant) in (int, float) and 0 < per_grant <= MAX_PER_GRANT):
            return None
        descriptors.append(Descriptor(tuple(entries), d_hits, None, None if per_grant is None else float(per_grant)))
    return request


def _plain_reservation(doc: dict, request: Request) -> bool:
    """The id and the reserve's own fields, when they are plain and in range."""
    rid = doc.get("id")
    if type(rid) is not str or not _ID.fullmatch(rid):
        return False
    request.id = rid
    for name, least, largest in (("lease_ms", 1, MAX_LEASE_MS), ("max_grant", 1, MAX_GRANT), ("min_grant", 1, MAX_GRANT)):
        value = doc.get(name)
        if value is not None:
            if not _plain_int(value, least, largest):
                return False
            setattr(request, name, value)
    return request.min_grant <= request.max_grant


def _plain_int(value, least: int, largest: int) -> bool:
    return type(value) is int and least <= value <= largest


def _checked(doc, api: str) -> Request:
    """Any request, with protojson's every rule, and the message naming what is wrong."""
    if type(doc) is not dict:
        raise BadRequest("the request must be a JSON object")
    _check_fields(doc, REQUEST_FIELDS[api], "")
    if api == EXTEND:
        return Request("", [], 0, _id(doc.get("id")), _lease(doc))
    domain = _string(doc.get("domain"), "domain")
    hits = _number(_either(doc, "hits_addend", "hitsAddend"), "hits_addend", MAX_UINT32)
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
    request = Request(domain, descriptors, hits or 1)
    if api in (RESERVE, SETTLE):
        request.id = _id(doc.get("id"))
    if api == RESERVE:
        _grants(doc, request)
    return request


def _grants(doc: dict, request: Request) -> None:
    request.lease_ms = _lease(doc)
    for name, json_name in (("max_grant", "maxGrant"), ("min_grant", "minGrant")):
        value = _number(_either(doc, name, json_name), name, MAX_GRANT, least=1)
        if value is not None:
            setattr(request, name, value)
    if request.min_grant > request.max_grant:
        raise BadRequest(f"min_grant: {request.min_grant} is above max_grant {request.max_grant}")


def _id(value) -> str:
    if value is None:
        raise BadRequest("id: required, the reservation's id")
    if type(value) is not str or not _ID.fullmatch(value):
        raise BadRequest("id: expected 1 to 64 characters of A-Z a-z 0-9 . _ : -")
    return value


def _lease(doc: dict) -> int:
    lease = _number(_either(doc, "lease_ms", "leaseMs"), "lease_ms", MAX_LEASE_MS, least=1)
    return DEFAULT_LEASE_MS if lease is None else lease


def _descriptor(item, path: str, api: str) -> Descriptor:
    if type(item) is not dict:
        raise BadRequest(f"{path}: expected an object")
    _check_fields(item, DESCRIPTOR_FIELDS[api], path + ".")
    raw_entries = item.get("entries")
    if raw_entries is None:
        raw_entries = []
    elif type(raw_entries) is not list:
        raise BadRequest(f"{path}.entries: expected a list")
    entries = tuple(_entry(e, f"{path}.entries[{i}]") for i, e in enumerate(raw_entries))
    hits = _number(_either(item, "hits_addend", "hitsAddend"), f"{path}.hits_addend", MAX_HITS)
    per_grant = _per_grant(_either(item, "per_grant", "perGrant"), f"{path}.per_grant")
    limit = item.get("limit")
    return Descriptor(entries, hits, None if limit is None else _limit(limit, f"{path}.limit"), per_grant)


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


def _number(value, path: str, largest: int, least: int = 0) -> int | None:
    """An integer field in [least, largest]."""
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
            raise BadRequest(f"{path}: expected an integer, got {_quoted(value)}") from None
    else:
        raise BadRequest(f"{path}: expected an integer")
    if not least <= number <= largest:
        raise BadRequest(f"{path}: {_shown(number)} is out of range [{least}, {largest}]")
    return number


def _per_grant(value, path: str) -> float | None:
    """A positive number (JSON number or decimal string), at most MAX_PER_GRANT."""
    if value is None:
        return None
    if type(value) is int or type(value) is float:
        number = float(value)
    elif type(value) is str and _DECIMAL.fullmatch(value):
        number = float(value)
    else:
        raise BadRequest(f"{path}: expected a number, got {_quoted(value)}")
    if not 0 < number <= MAX_PER_GRANT:
        raise BadRequest(f"{path}: {_shown(value)} is out of range (0, {MAX_PER_GRANT}]")
    return number


def _quoted(value) -> str:
    """A client's value in a message, cut short: an error must not echo a megabyte back."""
    text = orjson.dumps(value).decode() if type(value) is str else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _shown(number) -> str:
    """A number for a message: huge ones by their size (Python refuses str() past 4,300 digits)."""
    try:
        text = str(number)
    except ValueError:
        return "a number of more than 4300 digits"
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} digits)"
