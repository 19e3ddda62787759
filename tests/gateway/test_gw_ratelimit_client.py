"""The rate-limit client against the real service app, served in this process on memory://:
concurrent calls coalesce into batches, and a settle is retried until it lands."""

import asyncio
import contextlib

import uvicorn

from gateway.ratelimit_client import RateLimitClient
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
async def service(port: int):
    stats = Stats()
    app = create_app(Service(load_texts([("d.yaml", DOMAIN)]), Limiter(MemoryBackend()), stats), stats)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield stats
    finally:
        server.should_exit = True
        await task


def descriptor(user: str, hits: int) -> list[dict]:
    return [{"entries": [{"key": "user_id", "value": user}], "hits_addend": hits}]


async def remaining(client: RateLimitClient, host: str, user: str) -> int:
    _, body = await client.reserve(host, "budgets", descriptor(user, 0), 1.0)
    return body["statuses"][0]["limitRemaining"]


async def test_concurrent_calls_share_batches_and_each_gets_its_own_answer():
    port = free_port()
    host = f"127.0.0.1:{port}"
    client = RateLimitClient()
    async with service(port) as stats:
        answers = await asyncio.gather(*(client.reserve(host, "budgets", descriptor(f"u{i}", i + 1), 1.0)
                                         for i in range(50)))
        assert [status for status, _ in answers] == [200] * 50
        assert [body["statuses"][0]["limitRemaining"] for _, body in answers] == [10**6 - i - 1 for i in range(50)]
        calls = stats.requests[("/v1/batch", "200")] + stats.requests[("/v1/reserve", "200")]
        assert calls < 50  # coalesced: at most two calls on the wire, the rest waited and went together
        assert stats.requests[("/v1/batch", "200")] >= 1
    await client.close()


async def test_a_settle_is_retried_until_the_service_takes_it():
    port = free_port()
    host = f"127.0.0.1:{port}"
    client = RateLimitClient()
    client.settle(host, "budgets", descriptor("late", 40), 0.2)  # nothing listens yet
    await asyncio.sleep(0.3)
    async with service(port):
        for _ in range(100):  # bounded: the retries back off from 50 ms
            if await remaining(client, host, "late") == 10**6 - 40:
                break
            await asyncio.sleep(0.05)
        assert await remaining(client, host, "late") == 10**6 - 40
    await client.close()
