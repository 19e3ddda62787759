"""`remoteRateLimit`: budgets shared by every replica, kept by the rate-limit service.

The policy picks its rule (first true CEL condition) and turns each descriptor's CEL
entries into envoy descriptor entries; `ratelimit_client.py` carries them to the
service's reserve/settle API (docs/ratelimit.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.cel import CelError
from gateway.config.runtime import RemoteDescriptor, RemotePolicy, RemoteRule

log = logging.getLogger("tollgate.remote")

@dataclass(frozen=True)
class Descriptor:
    """One descriptor of one request: its envoy entries and what it charges."""

    spec: RemoteDescriptor
    entries: tuple[tuple[str, str], ...]

    def as_json(self, hits: int, max_hits: int | None = None) -> dict:
        out = {"entries": [{"key": k, "value": v} for k, v in self.entries], "hits_addend": hits}
        if max_hits is not None:
            out["max_hits"] = max_hits
        return out

    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.entries)


@dataclass(frozen=True)
class Status:
    code: str
    limit: int | None
    remaining: int
    reset_after: float
    retry_after: float


def _seconds(value) -> float:
    if value is None:
        return 0.0
    return float(str(value).rstrip("s") or 0)


def parse_status(raw: dict) -> Status:
    limit = raw.get("currentLimit") or {}
    per_unit = limit.get("requestsPerUnit")
    return Status(
        code=raw.get("code", "OK"),
        limit=int(per_unit) if per_unit is not None else None,
        remaining=int(raw.get("limitRemaining", 0)),
        reset_after=_seconds(raw.get("durationUntilReset")),
        retry_after=_seconds(raw.get("retryAfter") or raw.get("durationUntilReset")),
    )


def select_rule(rules: tuple[RemoteRule, ...], activation) -> RemotePolicy | None:
    """The first rule whose condition is true; an erroring or non-bool condition is false."""
    for rule in rules:
        if rule.condition is None:
            return rule.policy
        try:
            if rule.condition.evaluate(activation) is True:
                return rule.policy
        except CelError:
            continue
    return None


def resolve(policy: RemotePolicy, activation) -> list[Descriptor]:
    """Evaluates every descriptor's entries; one whose CEL fails is skipped."""
    out = []
    for spec in policy.descriptors:
        try:
            entries = tuple((e.key, _text(e.value.evaluate(activation))) for e in spec.entries)
        except CelError as e:
            log.debug("descriptor skipped: %s", e)
            continue
        if entries and all(v is not None for _, v in entries):
            out.append(Descriptor(spec, entries))
    return out


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
