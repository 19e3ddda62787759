"""The client of the rate-limit service: pooled keep-alive, coalescing under load.

Calls to one service host share a channel. While a call is on the wire, the calls
that arrive meanwhile wait and then go together as one `/v1/batch` request, so a
busy replica makes a few HTTP calls per round trip instead of one per decision, and
an idle one adds no delay at all. Settles are queued off the response's critical
path and retried until they land or the process exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import aiohttp

from gateway.config.runtime import RemotePolicy
from gateway.policies.remote_ratelimit import Status, parse_status

log = logging.getLogger("tollgate.remote")

MAX_IN_FLIGHT = 2  # HTTP calls on the wire per service host; more calls wait and batch
MAX_BATCH = 1000  # the service's /v1/batch limit
SETTLE_TIMEOUT = 5.0  # off the critical path: long enough that a retry is rarely a repeat
SETTLE_BACKOFF_MAX = 5.0  # seconds between retries of a settle the service did not take


class RemoteUnavailable(Exception):
    """The service could not be asked (down, timed out, or answered an error)."""


@dataclass
class _Call:
    op: str
    domain: str
    descriptors: list[dict]
    timeout: float
    future: asyncio.Future


class Channel:
    def __init__(self, session: aiohttp.ClientSession, host: str) -> None:
        self._session = session
        self.host = host
        self._queue: list[_Call] = []
        self._in_flight = 0

    async def call(self, op: str, domain: str, descriptors: list[dict], timeout: float) -> tuple[int, dict]:
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(op, domain, descriptors, timeout, future))
        if self._in_flight < MAX_IN_FLIGHT:
            self._flush()
        try:
            # On timeout wait_for cancels the future, and the sender skips it.
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RemoteUnavailable(f"rate-limit service {self.host}: no answer within {timeout:g}s") from None

    def _flush(self) -> None:
        calls, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        self._in_flight += 1
        asyncio.get_running_loop().create_task(self._send(calls))

    async def _send(self, calls: list[_Call]) -> None:
        try:
            results = await self._post(calls)
        except RemoteUnavailable as e:
            results = [e] * len(calls)
        finally:
            self._in_flight -= 1
            while self._queue and self._in_flight < MAX_IN_FLIGHT:
                self._flush()
        for call, result in zip(calls, results):
            if call.future.done():
                continue
            if isinstance(result, Exception):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)

    async def _post(self, calls: list[_Call]) -> list:
        if len(calls) == 1:
            c = calls[0]
            status, body = await self._request(f"/v1/{c.op}", {"domain": c.domain, "descriptors": c.descriptors},
                                               c.timeout)
            return [self._result(status, body)]
        payload = {"items": [{"op": c.op, "domain": c.domain, "descriptors": c.descriptors} for c in calls]}
        status, body = await self._request("/v1/batch", payload, max(c.timeout for c in calls))
        if status != 200:
            raise RemoteUnavailable(f"rate-limit service {self.host} answered HTTP {status} to a batch")
        return [self._result(item.get("status", 500), item.get("body") or {}) for item in body["items"]]

    async def _request(self, path: str, payload: dict, timeout: float) -> tuple[int, dict]:
        try:
            async with asyncio.timeout(timeout):
                async with self._session.post(f"http://{self.host}{path}", json=payload) as resp:
                    return resp.status, json.loads(await resp.read())
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            raise RemoteUnavailable(f"rate-limit service {self.host}: {type(e).__name__}") from e

    def _result(self, status: int, body: dict):
        if status not in (200, 429):
            return RemoteUnavailable(f"rate-limit service {self.host} answered HTTP {status}: {body.get('error', '')}")
        return status, body


class RemoteClient:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._channels: dict[str, Channel] = {}
        self._pending: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=60), json_serialize=json.dumps)

    def _channel(self, host: str) -> Channel:
        channel = self._channels.get(host)
        if channel is None:
            channel = self._channels[host] = Channel(self._session, host)
        return channel

    async def reserve(self, policy: RemotePolicy, descriptors: list[dict]) -> tuple[bool, list[Status], int | None]:
        """(admitted, per-descriptor statuses, elastic grant)."""
        status, body = await self._channel(policy.host).call("reserve", policy.domain, descriptors, policy.timeout)
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
        channel = self._channel(policy.host)
        while True:
            try:
                await channel.call("settle", policy.domain, descriptors, max(policy.timeout, SETTLE_TIMEOUT))
                return
            except RemoteUnavailable as e:
                log.warning("settle for %s not taken, retrying in %.2fs: %s", policy.domain, delay, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, SETTLE_BACKOFF_MAX)

    async def close(self, timeout: float = 10.0) -> None:
        if self._pending:
            _, pending = await asyncio.wait(list(self._pending), timeout=timeout)
            if pending:
                log.error("%d settles could not be delivered before shutdown", len(pending))
                for t in pending:
                    t.cancel()
        if self._session is not None:
            await self._session.close()
