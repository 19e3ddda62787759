"""The rate-limit client against the real service app, served in this process on memory://:
concurrent calls coalesce into batches, every caller waits at most its own timeout, a
settle is retried until it lands, held reservations are kept alive, and the token is sent."""

import asyncio
import contextlib
import json
import logging

import uvicorn

from gateway import ratelimit_client
from gateway.policies.remote_ratelimit import RemoteTarget
from gateway.ratelimit_client import RateLimitClient, RemoteUnavailable
from ratelimit_service.config import load_texts
from ratelimit_service.limiter import Limiter, MemoryBackend
from ratelimit_service.server import create_app
from ratelimit_service.service import Service
from ratelimit_service.stats import Stats
from tests.harness.procs import free_port

DOMAIN = """
domain: budgets
descriptors:
- key: user_id
  rate_limit: {unit: year, requests_per_unit: 1000000}
"""


@contextlib.asynccontextmanager
async def service(port: int, token: str | None = None):
    stats = Stats()
    service = Service(load_texts([("d.yaml", DOMAIN)]), Limiter(MemoryBackend()), stats)
    app = create_app(service, stats, token=token)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield stats
    finally:
        server.should_exit = True
        await task


def target(port: int, timeout: float = 1.0, token: str | None = None) -> RemoteTarget:
    fields = {"host": f"127.0.0.1:{port}", "domain": "budgets", "timeout": timeout,
              "descriptors": [{"entries": [{"key": "user_id", "value": "apiKey.user_id"}]}]}
    return RemoteTarget.model_validate({**fields, **({"token": token} if token else {})})


def descriptor(user: str, hits: int) -> list[dict]:
    return [{"entries": [{"key": "user_id", "value": user}], "hits_addend": hits}]


async def remaining(client: RateLimitClient, t: RemoteTarget, user: str) -> int:
    _, body = await client.budget(t, [{"entries": [{"key": "user_id", "value": user}]}])
    return body["statuses"][0]["limitRemaining"]


async def test_concurrent_calls_share_batches_and_each_gets_its_own_answer():
    port = free_port()
    t, client = target(port), RateLimitClient()
    async with service(port) as stats:
        answers = await asyncio.gather(*(client.reserve(t, f"r{i}", 60.0, descriptor(f"u{i}", i + 1))
                                         for i in range(50)))
        assert [status for status, _ in answers] == [200] * 50
        assert [body["statuses"][0]["limitRemaining"] for _, body in answers] == [10**6 - i - 1 for i in range(50)]
        calls = stats.requests[("/v1/batch", "200")] + stats.requests[("/v1/reserve", "200")]
        assert calls < 50  # coalesced: at most two calls on the wire, the rest waited and went together
        assert stats.requests[("/v1/batch", "200")] >= 1
    await client.close()


async def test_a_call_json_cannot_encode_fails_alone_and_the_calls_batched_with_it_are_answered():
    """A reserve of 2**64 tokens among 40 concurrent ones: it once raised inside the send
    and no call of its batch was ever answered. Now it fails at once, on its own."""
    port = free_port()
    t, client = target(port, 5.0), RateLimitClient()
    async with service(port) as stats:
        hits = [2**64 if i == 20 else 1 for i in range(40)]
        calls = [client.reserve(t, f"enc{i}", 60.0, descriptor(f"enc{i}", n)) for i, n in enumerate(hits)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert not any("no answer within" in str(r) for r in results), results  # answered, not timed out
        bad = results.pop(20)
        assert isinstance(bad, RemoteUnavailable) and "cannot encode the reserve call" in str(bad), bad
        assert [r[0] if isinstance(r, tuple) else r for r in results] == [200] * 39
        assert stats.requests[("/v1/batch", "200")] >= 1  # the others did go together
    await client.close()


async def test_a_settle_is_retried_until_the_service_takes_it_and_counts_once():
    port = free_port()
    t, client = target(port, 0.2), RateLimitClient()
    client.settle(t, "late-1", descriptor("late", 40))  # nothing listens yet
    client.settle(t, "late-1", descriptor("late", 40))  # a retry of the same settle
    await asyncio.sleep(0.3)
    async with service(port):
        for _ in range(100):  # bounded: the retries back off from 50 ms
            if await remaining(client, t, "late") < 10**6:
                break
            await asyncio.sleep(0.05)
        await client.close()  # every pending settle delivered
        assert await remaining(RateLimitClient(), t, "late") == 10**6 - 40  # charged once, not twice


async def test_a_settle_the_service_refuses_is_sent_once_and_logged_once(caplog):
    """An overflowing settle (10**18 tokens, past the service's 2**53) is a 400: sending it
    again can never succeed, so it is logged as an error, once, and dropped. So is a settle
    JSON cannot encode. A 5xx or no answer is still retried (the test above)."""
    port = free_port()
    t, client = target(port), RateLimitClient()
    async with service(port) as stats:
        with caplog.at_level(logging.WARNING, logger="tollgate.remote"):
            client.settle(t, "r-overflow", descriptor("big", 10**18))
            client.settle(t, "r-unencodable", descriptor("big", 2**64))
            await asyncio.sleep(1.0)  # the retries, had there been any: 50, 100, 200, 400 ms
        assert stats.requests[("/v1/settle", "400")] == 1 and stats.requests[("/v1/batch", "200")] == 0
        assert not client._pending  # dropped, not waiting at shutdown
        records = [r for r in caplog.records if r.name == "tollgate.remote"]
        assert [r.levelno for r in records] == [logging.ERROR, logging.ERROR], [r.getMessage() for r in records]
        messages = sorted(r.getMessage() for r in records)
        assert "r-overflow" in messages[0] and "budgets" in messages[0] and "HTTP 400" in messages[0]
        assert "r-unencodable" in messages[1] and "budgets" in messages[1] and "cannot encode" in messages[1]
        assert await remaining(client, t, "big") == 10**6  # nothing charged
    await client.close()


async def test_a_settle_refused_for_its_token_is_retried_until_the_token_is_right(monkeypatch, tmp_path):
    """A 401 is not the settle's fault: a rotated token reaches one side before the other.
    Dropped, the spend would be lost; retried, it lands once the service takes the token."""
    port = free_port()
    token = tmp_path / "token"
    token.write_text("old\n")
    monkeypatch.setenv(ratelimit_client.TOKEN_FILE_ENV, str(token))
    client = RateLimitClient()
    async with service(port, token="new") as stats:
        client.settle(target(port), "r-rotated", descriptor("rotated", 7))
        for _ in range(200):  # sent again after 50 ms, 100 ms...: wait for a second refusal
            if stats.requests[("/v1/settle", "401")] >= 2:
                break
            await asyncio.sleep(0.05)
        assert stats.requests[("/v1/settle", "401")] >= 2
        assert client._pending, "a settle refused for its token must not be dropped"
    async with service(port, token="old") as stats:  # the service restarted with this replica's token
        for _ in range(100):
            if not client._pending:
                break
            await asyncio.sleep(0.05)
        assert not client._pending
        assert stats.requests[("/v1/settle", "200")] == 1
    await client.close()


async def test_each_caller_waits_its_own_timeout_and_a_malformed_reply_fails_at_once():
    """A stalled service: a reserve (0.3 s) does not wait for the settles queued with it
    (5 s). A service that answers a batch without items fails every call in it at once."""
    hung = await asyncio.start_server(lambda r, w: asyncio.sleep(30), "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    client = RateLimitClient()
    for i in range(3):
        client.settle(target(port), f"s{i}", descriptor("x", 1))  # on the wire, never answered
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await client.reserve(target(port, 0.3), "r", 60.0, descriptor("x", 1))
    except RemoteUnavailable:
        pass
    assert loop.time() - started < 2.0  # the reserve's 0.3 s, not the settles' 5 s
    hung.close()

    async def broken_batch(reader, writer):
        body = json.dumps({"nothing": "here"}).encode()
        while True:  # every request on the connection, each answered without its fields
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    broken = await asyncio.start_server(broken_batch, "127.0.0.1", 0)
    t = target(broken.sockets[0].getsockname()[1], 5.0)
    started = loop.time()
    results = await asyncio.gather(*(client.reserve(t, f"b{i}", 60.0, descriptor("x", 1)) for i in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, RemoteUnavailable) for r in results)
    assert loop.time() - started < 2.0  # failed when the reply came, not at the timeout
    broken.close()
    for task in client._pending:
        task.cancel()


async def test_held_reservations_are_kept_alive_until_settled(monkeypatch):
    monkeypatch.setattr(ratelimit_client, "KEEPALIVE_SECONDS", 0.05)
    port = free_port()
    t, client = target(port), RateLimitClient()
    async with service(port) as stats:
        status, _ = await client.reserve(t, "long", 0.2, descriptor("streamer", 500))
        assert status == 200
        await asyncio.sleep(0.6)  # three leases long: extended, so still held
        assert await remaining(client, t, "streamer") == 10**6 - 500
        assert stats.requests[("/v1/extend", "200")] + stats.requests[("/v1/batch", "200")] >= 2
        client.settle(t, "long", descriptor("streamer", 120))
        await asyncio.sleep(0.3)
        assert await remaining(client, t, "streamer") == 10**6 - 120
    await client.close()


async def test_the_token_is_sent_from_the_config_or_the_environment(monkeypatch, tmp_path):
    port = free_port()
    async with service(port, token="s3cret"):
        refused = RateLimitClient()
        try:
            await refused.reserve(target(port), "t0", 60.0, descriptor("t", 1))
        except RemoteUnavailable as e:
            assert "401" in str(e)
        else:
            raise AssertionError("a call without the token must be refused")
        await refused.close()
        clients = [RateLimitClient()]
        status, _ = await clients[0].reserve(target(port, token="s3cret"), "t1", 60.0, descriptor("t", 1))
        assert status == 200
        (tmp_path / "token").write_text("s3cret\n")
        monkeypatch.setenv(ratelimit_client.TOKEN_FILE_ENV, str(tmp_path / "token"))
        clients.append(RateLimitClient())
        status, _ = await clients[1].reserve(target(port), "t2", 60.0, descriptor("t", 1))
        assert status == 200
        for client in clients:
            await client.close()


async def test_closing_answers_the_calls_on_the_wire_and_leaves_no_task():
    """A service that accepts and never answers: close() must not leave the caller waiting
    out its timeout, nor a send task behind (one left pending outlived its event loop)."""
    stalled = await asyncio.start_server(lambda r, w: asyncio.sleep(3600), "127.0.0.1", 0)
    port = stalled.sockets[0].getsockname()[1]
    client = RateLimitClient()
    call = asyncio.create_task(client.reserve(target(port, timeout=30.0), "c1", 60.0, descriptor("c", 1)))
    await asyncio.sleep(0.2)
    channel = client._channels[f"127.0.0.1:{port}"]
    assert channel._sending, "the call is on the wire"
    await client.close()
    for _ in range(10):  # a few turns of the loop, no clock: the cancelled send answers on its way out
        if call.done():
            break
        await asyncio.sleep(0)
    assert call.done(), "close() left the caller waiting out its 30 s timeout"
    try:
        call.result()
    except RemoteUnavailable as e:
        assert "closed" in str(e) or "CancelledError" in str(e)
    else:
        raise AssertionError("a call cut off by close() must fail")
    assert not channel._sending
    stalled.close()
