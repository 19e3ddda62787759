"""The client of the rate-limit service: kept-alive connections, coalescing under load.

Calls to one service host share a channel. While a call is on the wire, the calls
that arrive meanwhile wait and then go together as one `/v1/batch` request, so a
busy replica makes a few HTTP calls per round trip instead of one per decision, and
an idle one adds no delay at all. Settles are queued off the response's critical
path and retried until they land or the process exits.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson

from gateway.http1 import HTTPError, Pool

log = logging.getLogger("tollgate.remote")

MAX_IN_FLIGHT = 2  # HTTP calls on the wire per service host; more calls wait and batch
MAX_BATCH = 1000  # the service's /v1/batch limit
SETTLE_TIMEOUT = 5.0  # off the critical path: long enough that a retry is rarely a repeat
SETTLE_BACKOFF_MAX = 5.0  # seconds between retries of a settle the service did not take


JSON_HEADERS = b"Content-Type: application/json\r\nAccept: application/json\r\n"


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
    def __init__(self, host: str) -> None:
        self.host = host
        name, _, port = host.rpartition(":")
        self._pool = Pool(name, int(port))
        self._queue: list[_Call] = []
        self._in_flight = 0

    def submit(self, op: str, domain: str, descriptors: list[dict], timeout: float) -> asyncio.Future:
        """Queues a call; the future gets (status, body) or RemoteUnavailable.

        The HTTP call carrying it is bounded by `timeout`; a call queued behind a full
        wire waits at most for the calls ahead of it, each bounded the same way.
        """
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(op, domain, descriptors, timeout, future))
        if self._in_flight < MAX_IN_FLIGHT:
            self._flush()
        return future

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
                status, body = await self._pool.post(path, orjson.dumps(payload), JSON_HEADERS)
            return status, orjson.loads(body)
        except (HTTPError, asyncio.TimeoutError, orjson.JSONDecodeError) as e:
            raise RemoteUnavailable(f"rate-limit service {self.host}: {e or type(e).__name__}") from e

    def close(self) -> None:
        self._pool.close()

    def _result(self, status: int, body: dict):
        if status not in (200, 429):
            return RemoteUnavailable(f"rate-limit service {self.host} answered HTTP {status}: {body.get('error', '')}")
        return status, body


class RateLimitClient:
    """Every rate-limit service this replica calls, one channel per host."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}
        self._pending: set[asyncio.Future] = set()  # settles not yet delivered

    def _channel(self, host: str) -> Channel:
        channel = self._channels.get(host)
        if channel is None:
            channel = self._channels[host] = Channel(host)
        return channel

    async def reserve(self, host: str, domain: str, descriptors: list[dict], timeout: float) -> tuple[int, dict]:
        """(HTTP status, reply body): 200 admitted, 429 refused; raises RemoteUnavailable."""
        return await self._channel(host).submit("reserve", domain, descriptors, timeout)

    def settle(self, host: str, domain: str, descriptors: list[dict], timeout: float) -> None:
        """Queues an adjustment; it is retried until the service takes it.

        Callbacks rather than a task per settle: this runs for every request.
        """
        delivered = asyncio.get_running_loop().create_future()
        self._pending.add(delivered)
        delivered.add_done_callback(self._pending.discard)
        self._attempt(host, domain, descriptors, max(timeout, SETTLE_TIMEOUT), delivered, 0.05)

    def _attempt(self, host: str, domain: str, descriptors: list[dict], timeout: float,
                 delivered: asyncio.Future, delay: float) -> None:
        if delivered.done():  # given up at shutdown
            return
        attempt = self._channel(host).submit("settle", domain, descriptors, timeout)

        def finished(f: asyncio.Future) -> None:
            error = f.exception()
            if error is None:
                if not delivered.done():
                    delivered.set_result(None)
                return
            log.warning("settle for %s not taken, retrying in %.2fs: %s", domain, delay, error)
            asyncio.get_running_loop().call_later(
                delay, self._attempt, host, domain, descriptors, timeout, delivered,
                min(delay * 2, SETTLE_BACKOFF_MAX))

        attempt.add_done_callback(finished)

    async def close(self, timeout: float = 10.0) -> None:
        if self._pending:
            _, pending = await asyncio.wait(list(self._pending), timeout=timeout)
            if pending:
                log.error("%d settles could not be delivered before shutdown", len(pending))
                for f in pending:
                    f.cancel()
        for channel in self._channels.values():
            channel.close()
