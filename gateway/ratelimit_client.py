"""The client of the rate-limit service: kept-alive connections, coalescing under load.

Calls to one service host share a channel. While a call is on the wire, the calls
that arrive meanwhile wait and then go together as one `/v1/batch` request, so a
busy replica makes a few HTTP calls per round trip instead of one per decision, and
an idle one adds no delay at all.

Every caller waits at most its own timeout, batched or not; a reply that does not fit
the calls fails them at once. Settles are queued off the response's critical path and
retried until they land: the service applies a reservation's settle exactly once, so a
retry after a lost reply is safe. A settle the service refuses as wrong in itself (a 4xx
but 401, 403, 408 and 429) is logged once and dropped: the same call can never succeed.
The reservations this replica holds are kept alive (their lease extended) until settled;
if the replica dies, they expire on the service and return to their budgets by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from gateway.http1 import HTTPError, Pool

log = logging.getLogger("tollgate.remote")

MAX_IN_FLIGHT = 2  # HTTP calls on the wire per service host; more calls wait and batch
MAX_BATCH = 1000  # the service's /v1/batch limit
SETTLE_TIMEOUT = 5.0  # off the critical path: long enough that a retry is rarely needed
SETTLE_BACKOFF_MAX = 5.0  # seconds between retries of a settle the service did not take
KEEPALIVE_SECONDS = 1.0  # how often held reservations are checked for a lease to extend

TOKEN_ENV, TOKEN_FILE_ENV = "TOLLGATE_RATELIMIT_TOKEN", "TOLLGATE_RATELIMIT_TOKEN_FILE"


class Target(Protocol):
    """Where and how to call: a `remoteRateLimit` target (gateway/policies/remote_ratelimit.py)."""

    service: str  # host:port
    domain: str
    timeout: float  # seconds, per call
    token: str | None  # None: $TOLLGATE_RATELIMIT_TOKEN / _FILE


class RemoteUnavailable(Exception):
    """The service could not be asked (down, timed out, or answered an error)."""


class RemoteRefused(RemoteUnavailable):
    """The service refused the call itself (a 4xx but 401, 403, 408 and 429), or the call
    could not even be encoded (`status` None): sending it again cannot succeed."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


def _final(status: int) -> bool:
    """Whether an HTTP status says the call itself is wrong: a 4xx, except a timeout (408),
    a refusal to take more now (429), and a token the service does not take (401, 403):
    that is fixed by an operator (a rotated Secret reaching one side first), after which
    the same settle lands, so dropping it would lose the spend."""
    return 400 <= status < 500 and status not in (401, 403, 408, 429)


def environment_token() -> str | None:
    """The bearer token the service expects, from the environment (a mounted Secret's file)."""
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    return os.environ.get(TOKEN_ENV) or None


# What each call's answer must hold to be believed.
_ANSWER = {"extend": "extended"}
_SHAPE = {"reserve": list, "settle": list, "budget": list, "extend": bool}


@dataclass
class _Call:
    item: bytes  # the call's JSON, with its "op": encoded when submitted, so a bad one fails alone
    single: bytes  # the same call's own body, for when it goes alone
    op: str
    deadline: float  # loop time the caller stops waiting
    future: asyncio.Future = field(repr=False)


class Channel:
    def __init__(self, host: str, token: str | None) -> None:
        self.host = host
        name, _, port = host.rpartition(":")
        self._pool = Pool(name, int(port))
        auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
        self._headers = b"Content-Type: application/json\r\nAccept: application/json\r\n" + auth
        self._queue: list[_Call] = []
        self._in_flight = 0
        self._sending: set[asyncio.Task] = set()  # calls on the wire, cancelled by close()
        self._closed = False

    async def call(self, op: str, body: dict, timeout: float) -> tuple[int, dict]:
        """(status, body) of one call, within `timeout` seconds whatever else is queued.

        The call's future is its own: at the deadline a timer fails it, and the answer that
        comes later is dropped (`_send` skips a done future). A timer, not wait_for(shield()),
        which built two more futures and a task per call on the hot path."""
        future = self.submit(op, body, timeout)
        timer = asyncio.get_running_loop().call_later(timeout, _give_up, future, self.host, timeout)
        try:
            return await future
        finally:
            timer.cancel()

    def submit(self, op: str, body: dict, timeout: float) -> asyncio.Future:
        """Queues a call; its future gets (status, body) or RemoteUnavailable."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        try:
            single = orjson.dumps(body)
        except TypeError as e:  # a number too large for JSON's integers: this call alone fails
            future.set_exception(RemoteRefused(f"cannot encode the {op} call: {e}", None))
            return future
        item = b'{"op":"%s",%s' % (op.encode(), single[1:])
        self._queue.append(_Call(item, single, op, loop.time() + timeout, future))
        if self._in_flight < MAX_IN_FLIGHT:
            self._flush()
        return future

    def _flush(self) -> None:
        now = asyncio.get_running_loop().time()
        # A reserve whose caller gave up before it left is not sent: it would only
        # have to be released again.
        live, late = [], []
        for c in self._queue:
            (late if c.op == "reserve" and c.deadline <= now else live).append(c)
        _fail(late, RemoteUnavailable("gave up before it was sent"))
        calls, self._queue = live[:MAX_BATCH], live[MAX_BATCH:]
        if not calls or self._closed:
            _fail(calls, RemoteUnavailable(f"rate-limit client for {self.host} closed"))
            return
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(calls))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            results = await self._post(calls)
        except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - every caller gets an answer
            error = e if isinstance(e, RemoteUnavailable) else RemoteUnavailable(f"{self.host}: {e!r}")
            results = [error] * len(calls)
        finally:
            self._in_flight -= 1
            while self._queue and self._in_flight < MAX_IN_FLIGHT:
                self._flush()
        for call, result in zip(calls, results):
            # A caller whose loop is gone (a client closed late, at shutdown) has no one to tell.
            if call.future.done() or call.future.get_loop().is_closed():
                continue
            if isinstance(result, Exception):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)

    async def _post(self, calls: list[_Call]) -> list:
        timeout = max(0.05, max(c.deadline for c in calls) - asyncio.get_running_loop().time())
        if len(calls) == 1:
            status, body = await self._request(f"/v1/{calls[0].op}", calls[0].single, timeout)
            return [self._result(calls[0].op, status, body)]
        status, body = await self._request("/v1/batch", b'{"items":[%s]}' % b",".join(c.item for c in calls),
                                           timeout)
        items = body.get("items") if status == 200 and isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) != len(calls):
            # Never guess which answer belongs to which call.
            raise RemoteUnavailable(f"rate-limit service {self.host} answered HTTP {status} to a batch of "
                                    f"{len(calls)} without an answer per call")
        return [self._result(c.op, i.get("status", 500), i.get("body") or {}) if isinstance(i, dict)
                else RemoteUnavailable("a malformed batch answer") for c, i in zip(calls, items)]

    async def _request(self, path: str, body: bytes, timeout: float) -> tuple[int, dict]:
        try:
            async with asyncio.timeout(timeout):
                status, raw = await self._pool.post(path, body, self._headers)
            return status, orjson.loads(raw)
        except (HTTPError, asyncio.TimeoutError, orjson.JSONDecodeError) as e:
            raise RemoteUnavailable(f"rate-limit service {self.host}: {e or type(e).__name__}") from e

    def close(self) -> None:
        """Fails what is queued and cancels what is on the wire: no task outlives the client
        (one left pending warned 'Event loop is closed' when its loop ended first)."""
        self._closed = True
        queued, self._queue = self._queue, []
        _fail(queued, RemoteUnavailable(f"rate-limit client for {self.host} closed"))
        for task in self._sending:
            task.cancel()
        self._pool.close()

    def _result(self, op: str, status: int, body):
        """(status, body), or the RemoteUnavailable that answers a reply without the shape
        its call needs (a decision without statuses is never taken for an OK)."""
        if not isinstance(body, dict):
            return RemoteUnavailable(f"rate-limit service {self.host} answered HTTP {status} without a JSON object")
        if status == 409 or (status in (200, 429) and isinstance(body.get(_ANSWER.get(op, "statuses")), _SHAPE[op])):
            return status, body
        error = body.get("error") or "a reply without the fields of its call"
        message = f"rate-limit service {self.host} answered HTTP {status} to {op}: {error}"
        return RemoteRefused(message, status) if _final(status) else RemoteUnavailable(message)


def _give_up(future: asyncio.Future, host: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(RemoteUnavailable(f"rate-limit service {host}: no answer within {timeout:g}s"))


def _fail(calls: list[_Call], error: RemoteUnavailable) -> None:
    for c in calls:
        if not c.future.done():
            c.future.set_exception(error)
            c.future.add_done_callback(_consume)


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


@dataclass
class _Lease:
    host: str
    token: str | None
    seconds: float
    renew_at: float


class RateLimitClient:
    """Every rate-limit service this replica calls, one channel per host."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}
        self._pending: set[asyncio.Future] = set()  # settles not yet delivered
        self._leases: dict[str, _Lease] = {}  # reservations held, by id
        self._keeper: asyncio.Task | None = None
        self._env_token = environment_token()

    def _channel(self, target: Target) -> Channel:
        token = target.token or self._env_token
        channel = self._channels.get(target.service)
        if channel is None:
            channel = self._channels[target.service] = Channel(target.service, token)
        return channel

    async def reserve(self, target: Target, rid: str, lease: float,
                      descriptors: list[dict]) -> tuple[int, dict]:
        """(HTTP status, reply body): 200 admitted, 429 refused; raises RemoteUnavailable.
        An admitted reservation is kept alive until settled."""
        body = {"domain": target.domain, "id": rid, "lease_ms": int(lease * 1000), "descriptors": descriptors}
        status, reply = await self._channel(target).call("reserve", body, target.timeout)
        # Only a reservation that holds something has a lease to keep (the service opens
        # no record for one that holds nothing).
        if status == 200 and any(d.get("hits_addend") or d.get("per_grant") for d in descriptors):
            self._leases[rid] = _Lease(target.service, target.token, lease, time.monotonic() + lease / 2)
            self._keep_alive()
        return status, reply

    async def budget(self, target: Target, descriptors: list[dict]) -> tuple[int, dict]:
        return await self._channel(target).call("budget", {"domain": target.domain, "descriptors": descriptors},
                                                target.timeout)

    def settle(self, target: Target, rid: str, descriptors: list[dict]) -> None:
        """Queues the final charges of reservation `rid`; retried until the service takes them.

        Callbacks rather than a task per settle: this runs for every request.
        """
        self._leases.pop(rid, None)
        delivered = asyncio.get_running_loop().create_future()
        self._pending.add(delivered)
        delivered.add_done_callback(self._pending.discard)
        body = {"domain": target.domain, "id": rid, "descriptors": descriptors}
        self._attempt(self._channel(target), body, max(target.timeout, SETTLE_TIMEOUT), delivered, 0.05)

    def _attempt(self, channel: Channel, body: dict, timeout: float, delivered: asyncio.Future, delay: float) -> None:
        if delivered.done():  # given up at shutdown
            return
        attempt = channel.submit("settle", body, timeout)

        def finished(f: asyncio.Future) -> None:
            error = f.exception()
            if error is not None and not isinstance(error, RemoteRefused):
                log.warning("settle for %s not taken, retrying in %.2fs: %s", body["domain"], delay, error)
                asyncio.get_running_loop().call_later(
                    delay, self._attempt, channel, body, timeout, delivered, min(delay * 2, SETTLE_BACKOFF_MAX))
                return
            if error is not None:  # refused: never taken, however often sent, so once is enough
                log.error("settle of reservation %s for domain %s refused, not retried: %s",
                          body["id"], body["domain"], error)
            if not delivered.done():
                delivered.set_result(None)

        attempt.add_done_callback(finished)

    def _keep_alive(self) -> None:
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._extend_leases())

    async def _extend_leases(self) -> None:
        """Extends every held reservation half-way through its lease (a long stream),
        one `extend` per reservation, coalesced with the rest of the traffic."""
        while self._leases:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            now = time.monotonic()
            for rid, lease in list(self._leases.items()):
                if lease.renew_at <= now:
                    lease.renew_at = now + lease.seconds / 2
                    channel = self._channels[lease.host]
                    channel.submit("extend", {"id": rid, "lease_ms": int(lease.seconds * 1000)}, SETTLE_TIMEOUT)

    async def close(self, timeout: float = 10.0) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
        if self._pending:
            _, pending = await asyncio.wait(list(self._pending), timeout=timeout)
            if pending:
                log.error("%d settles could not be delivered before shutdown", len(pending))
                for f in pending:
                    f.cancel()
        for channel in self._channels.values():
            channel.close()


@dataclass(frozen=True, slots=True)
class Status:
    """One descriptor's answer from the service (protojson, zero fields omitted)."""

    code: str
    limit: int | None  # in the budget's units (micro-dollars for usd)
    unit: str  # the period: DAY, MONTH, ...
    remaining: int
    reset_after: float  # seconds until the budget is full again (a calendar one: its next start)
    retry_after: float
    spent: int = 0
    resets_at: str = ""


def _seconds(value) -> float:
    return 0.0 if value is None else float(str(value).rstrip("s") or 0)


def parse_status(raw: dict) -> Status:
    limit = raw.get("currentLimit") or {}
    per_unit = limit.get("requestsPerUnit")
    return Status(
        code=raw.get("code", "OK"),
        limit=int(per_unit) if per_unit is not None else None,
        unit=str(limit.get("unit", "")),
        remaining=int(raw.get("limitRemaining", 0)),
        reset_after=_seconds(raw.get("durationUntilReset")),
        retry_after=_seconds(raw.get("retryAfter") or raw.get("durationUntilReset")),
        spent=int(raw.get("spent", 0)),
        resets_at=str(raw.get("resetsAt", "")),
    )
