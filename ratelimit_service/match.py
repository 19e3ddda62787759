"""The descriptor tree of one domain, and envoy's lookup over it.

Lookup follows envoyproxy/ratelimit: at each level of the request's entries try
the exact `key`/`value`, then the level's wildcard values in config order, then
the bare `key` (the default); there is no backtracking, and a limit applies only
if it sits at the depth of the request's last entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Envoy's RateLimitResponse.RateLimit.Unit, with the length of each unit.
UNIT_SECONDS: dict[str, int] = {
    "SECOND": 1,
    "MINUTE": 60,
    "HOUR": 3600,
    "DAY": 86400,
    "WEEK": 7 * 86400,
    "MONTH": 30 * 86400,
    "YEAR": 365 * 86400,
}
UNIT_NUMBERS: dict[str, int] = {
    "UNKNOWN": 0, "SECOND": 1, "MINUTE": 2, "HOUR": 3, "DAY": 4, "MONTH": 5, "YEAR": 6, "WEEK": 7,
}
# The `algorithm:` names and the codes the scripts and bucket keys use.
ALGORITHMS: dict[str, str] = {"token_bucket": "tb", "fixed_window": "fw", "calendar": "cal"}
ALGORITHM_NAMES: dict[str, str] = {code: name for name, code in ALGORITHMS.items()}
CALENDAR_UNITS = frozenset({"DAY", "WEEK", "MONTH", "YEAR"})


def default_algorithm(unit: str) -> str:
    """A budget of a day or longer starts again at its calendar boundary (envoy's day
    window resets at UTC midnight too); shorter limits are token buckets."""
    return "cal" if unit in CALENDAR_UNITS else "tb"


Entry = tuple[str, str]


@dataclass(slots=True)
class Limit:
    """One `rate_limit` block, resolved. `unit` is envoy's enum name ("DAY")."""

    requests_per_unit: int  # the capacity: requests or tokens, or micro-dollars when `usd`
    unit: str
    stat_key: str  # the config path under the domain, e.g. "user_id_mike"
    algorithm: str = "tb"  # "tb" token bucket | "fw" fixed window | "cal" calendar window
    name: str = ""
    replaces: tuple[str, ...] = ()
    unlimited: bool = False
    shadow_mode: bool = False
    detailed_metric: bool = False
    usd: bool = False  # a dollar budget, counted in micro-dollars
    timezone: str = "UTC"  # where a calendar window's boundaries fall
    # protojson `currentLimit`, built once: replies share it. /json keeps envoy's
    # fields; /v1 replies also mark a dollar budget.
    current_limit: dict = field(init=False, repr=False)
    v1_limit: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.current_limit = {"requestsPerUnit": self.requests_per_unit, "unit": self.unit}
        if self.name:
            self.current_limit["name"] = self.name
        if not self.requests_per_unit:
            del self.current_limit["requestsPerUnit"]  # protojson omits zero values
        self.v1_limit = {**self.current_limit, "usd": True} if self.usd else self.current_limit

    @property
    def period(self) -> int:
        return UNIT_SECONDS[self.unit]


@dataclass(slots=True)
class Wildcard:
    key: str
    value: str  # the pattern as configured, e.g. "files/*"
    parts: tuple[str, ...]  # the pattern split on "*", once at load

    def matches(self, value: str) -> bool:
        parts = self.parts
        first, last = parts[0], parts[-1]
        if len(value) < sum(map(len, parts)) or not value.startswith(first) or not value.endswith(last):
            return False
        rest = value[len(first):len(value) - len(last)]
        for part in parts[1:-1]:
            at = rest.find(part)
            if at < 0:
                return False
            rest = rest[at + len(part):]
        return True


@dataclass(slots=True)
class Node:
    """A descriptor level: children by (key, value), value None for the default."""

    limit: Limit | None = None
    share_threshold: bool = False
    children: dict[tuple[str, str | None], "Node"] = field(default_factory=dict)
    wildcards: list[Wildcard] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Match:
    """A limit found for a request descriptor, and what identifies its bucket."""

    limit: Limit
    bucket: tuple[Entry, ...]  # the entries, shared wildcard values replaced by their pattern
    stat_key: str


def lookup(root: Node, entries: tuple[Entry, ...]) -> Match | None:
    node = root
    limit: Limit | None = None
    shared: dict[int, str] = {}
    last = len(entries) - 1
    for i, (key, value) in enumerate(entries):
        found = node.children.get((key, value))
        if found is None and node.wildcards:
            for wildcard in node.wildcards:
                if wildcard.key == key and wildcard.matches(value):
                    found = node.children[(key, wildcard.value)]
                    if found.share_threshold:
                        shared[i] = wildcard.value
                    break
        if found is None:
            found = node.children.get((key, None))
        if found is None:
            break
        if found.limit is not None and i == last:
            limit = found.limit
        if not found.children:
            break
        node = found
    if limit is None:
        return None
    bucket = tuple((k, shared.get(i, v)) for i, (k, v) in enumerate(entries)) if shared else entries
    return Match(limit, bucket, runtime_key(bucket) if limit.detailed_metric else limit.stat_key)


def runtime_key(entries: tuple[Entry, ...]) -> str:
    """Envoy's key for request entries: `key_value` joined by dots (bare key if no value)."""
    return ".".join(f"{k}_{v}" if v else k for k, v in entries)
