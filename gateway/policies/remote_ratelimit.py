"""`remoteRateLimit`: budgets shared by every replica, kept by the rate-limit service.

The policy picks its rule (first true CEL condition), turns each descriptor's CEL
entries into envoy descriptor entries, and talks to the service's reserve/settle API
(docs/ratelimit.md) over one pooled keep-alive session. Settles are queued off the
response's critical path and retried until they land or the process exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import aiohttp

from gateway.cel import CelError
from gateway.config.runtime import RemoteDescriptor, RemotePolicy, RemoteRule

log = logging.getLogger("tollgate.remote")

SETTLE_BACKOFF_MAX = 5.0  # seconds between retries of a settle the service did not take


class RemoteUnavailable(Exception):
    """The service could not be asked (down, timed out, or answered an error)."""


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


class RemoteClient:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
            json_serialize=json.dumps)

    async def call(self, policy: RemotePolicy, op: str, descriptors: list[dict]) -> tuple[int, dict]:
        url = f"http://{policy.host}/v1/{op}"
        payload = {"domain": policy.domain, "descriptors": descriptors}
        try:
            async with asyncio.timeout(policy.timeout):
                async with self._session.post(url, json=payload) as resp:
                    body = await resp.read()
                    status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise RemoteUnavailable(f"rate-limit service {policy.host}: {type(e).__name__}") from e
        if status not in (200, 429):
            raise RemoteUnavailable(f"rate-limit service {policy.host} answered HTTP {status}")
        try:
            return status, json.loads(body)
        except ValueError as e:
            raise RemoteUnavailable(f"rate-limit service {policy.host} sent invalid JSON") from e

    async def reserve(self, policy: RemotePolicy, descriptors: list[dict]) -> tuple[bool, list[Status], int | None]:
        """(admitted, per-descriptor statuses, elastic grant)."""
        status, body = await self.call(policy, "reserve", descriptors)
        statuses = [parse_status(s) for s in body.get("statuses", [])]
        granted = body.get("granted")
        return status == 200, statuses, int(granted) if granted is not None else None

    def settle(self, policy: RemotePolicy, descriptors: list[dict]) -> None:
        """Queues an adjustment; it is retried until the service takes it."""
        task = asyncio.get_running_loop().create_task(self._settle(policy, descriptors))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, policy: RemotePolicy, descriptors: list[dict]) -> None:
        delay = 0.05
        while True:
            try:
                await self.call(policy, "settle", descriptors)
                return
            except RemoteUnavailable as e:
                log.warning("settle for %s not taken, retrying in %.2fs: %s", policy.domain, delay, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, SETTLE_BACKOFF_MAX)

    async def close(self, timeout: float = 10.0) -> None:
        if self._pending:
            done, pending = await asyncio.wait(list(self._pending), timeout=timeout)
            if pending:
                log.error("%d settles could not be delivered before shutdown", len(pending))
                for t in pending:
                    t.cancel()
        if self._session is not None:
            await self._session.close()
