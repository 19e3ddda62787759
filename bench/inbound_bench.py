"""CPU per request of what issue 12 added to the hot path, against baselines from the same run.

    python -m bench.inbound_bench [--rounds 7]

Rows (medians over interleaved rounds):
- a request head (request line + 12 headers, 420 bytes) through the LLM listener's
  protocol with header limits and the header deadline (gateway/inbound.py), against
  uvicorn's own HttpToolsProtocol; both parse the head and start the (empty) ASGI app,
  so the difference is the limits' cost;
- one access-log line (gateway/access_log.py, written to /dev/null), against the
  request metric recorded next to it (`GatewayMetrics.request`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import uvicorn
from starlette.datastructures import Headers
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.access_log import AccessLog
from gateway.call import Call
from gateway.config.runtime import Backend, GatewayConfig, Policies, Route
from gateway.inbound import guarded_protocol
from gateway.llm import Dialect, Usage, parse_request
from gateway.metrics import GatewayMetrics
from gateway.policies.apikey import Identity, Metadata

HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway:4000\r\nUser-Agent: OpenAI/Python 1.51.0\r\n"
        b"Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer sk-alice-abc123def456\r\nX-Stainless-Lang: python\r\nX-Stainless-Os: Linux\r\n"
        b"X-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\nConnection: keep-alive\r\n"
        b"Content-Length: 2\r\n\r\n{}")


class Transport:
    """Enough of an asyncio transport for uvicorn's protocol; swallows what is written."""

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 4000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def write(self, data) -> None:
        pass

    def close(self) -> None:
        pass

    pause_reading = resume_reading = set_protocol = close


async def empty_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def per_request(protocol_class, n: int) -> float:
    config = uvicorn.Config(empty_app, lifespan="off", log_config=None, access_log=False)
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(Transport())
    start = time.perf_counter()
    for _ in range(n):
        protocol.data_received(HEAD)
        await asyncio.sleep(0)  # the ASGI task runs and completes the response
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    protocol.connection_lost(None)
    return elapsed / n


def access_log_pair(tmp: Path):
    config = GatewayConfig(source=tmp, listeners=())
    route = Route("llm", "/", Policies(), (Backend("gpt-4o-mini", "openAI", None, None, "http://x"),))
    call = Call(0.0, config, route, Dialect.OPENAI, "POST", "/v1/chat/completions", Headers({}))
    call.identity = Identity("477fe4bee6e6", Metadata({"user_id": "alice"}))
    call.bind(parse_request(Dialect.OPENAI, b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'),
              route.backends[0])
    call.observe(Usage(9, 20))
    call.upstream_status, call.cost_usd = 200, 0.0000135
    log = AccessLog(open(os.devnull, "wb"))
    metrics = GatewayMetrics()
    return lambda: log.write(call, 0.0123), lambda: metrics.request(200, "ok", 0.0123)


def per_call(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def report(name: str, pairs: list[tuple[float, float]]) -> None:
    ours, base = [p[0] * 1e6 for p in pairs], [p[1] * 1e6 for p in pairs]
    ratios = [o / b for o, b in zip(ours, base)]
    print(f"{name}: {statistics.median(ours):.2f} us vs {statistics.median(base):.2f} us "
          f"(+{statistics.median(ours) - statistics.median(base):.2f} us), ratio {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    guarded = guarded_protocol(lambda: (64 * 1024, 100, 30.0))
    heads = []
    for _ in range(args.rounds):  # interleaved: drift on this machine hits both sides alike
        g = asyncio.run(per_request(guarded, 20_000))
        b = asyncio.run(per_request(HttpToolsProtocol, 20_000))
        heads.append((g, b))
    report("request head with limits vs uvicorn's HttpToolsProtocol", heads)
    write, metric = access_log_pair(Path("bench.yaml"))
    report("access log line vs the request metric", [(per_call(write, 20_000), per_call(metric, 20_000))
                                                      for _ in range(args.rounds)])


if __name__ == "__main__":
    main()
