"""Runs one gateway replica: the LLM listeners, the admin listener and the config reloader.

All listeners share one event loop and one `Replica`. Shutdown on SIGTERM/SIGINT is
graceful: listeners stop accepting, in-flight responses (streams included) finish and
are charged, abandoned streams are drained, pending settles are flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from gateway.app import build_app
from gateway.config.loader import load
from gateway.config.runtime import GatewayConfig, Listener
from gateway.inbound import guarded_protocol
from gateway.metrics import CONTENT_TYPE
from gateway.replica import Replica
from tollgate_common.watch import Reloader

log = logging.getLogger("tollgate")

GRACEFUL_SECONDS = 30
BACKLOG = 2048


class ListenError(Exception):
    """A listener's address cannot be bound: one line for the operator, nothing started."""


def bind(host: str, port: int, what: str) -> socket.socket:
    """A bound socket for one listener, made before any server starts: a port in use is
    one clear error naming the listener, instead of uvicorn exiting from inside a task."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ListenError(f"cannot listen on {host}:{port} ({what}): {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse it
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port} ({what}): {e.strerror or e}") from None
    return sock


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def build_admin(replica: Replica) -> FastAPI:
    admin = FastAPI(title="Tollgate admin", docs_url=None, redoc_url=None, openapi_url=None)

    @admin.get("/metrics")
    def metrics() -> Response:
        return Response(replica.metrics.render(), media_type=CONTENT_TYPE)

    @admin.get("/healthz/live")
    def live() -> Response:
        return PlainTextResponse("ok")

    @admin.get("/healthz/ready")
    def ready(request: Request) -> Response:
        return PlainTextResponse("ready" if replica.ready else "starting", status_code=200 if replica.ready else 503)

    return admin


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `serve`, which owns several."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _uvicorn(app, host: str, port: int, **options) -> _Server:
    config = uvicorn.Config(
        app, host=host, port=port, loop="none", lifespan="off",
        access_log=False, log_config=None, timeout_graceful_shutdown=GRACEFUL_SECONDS,
        backlog=BACKLOG, timeout_keep_alive=30, proxy_headers=False, server_header=False,
        **{"http": "httptools", **options},
    )
    return _Server(config)


def llm_server(replica: Replica, listener: Listener) -> _Server:
    """One LLM listener: header limits (gateway/inbound.py), TLS when configured, and no
    WebSocket support, so an upgrade request is served as plain HTTP (a 4xx here)."""
    def limits() -> tuple[int, int, float]:
        config = replica.config
        return config.max_header_bytes, config.max_header_count, config.header_timeout

    tls = {"ssl_certfile": listener.tls[0], "ssl_keyfile": listener.tls[1]} if listener.tls else {}
    return _uvicorn(build_app(replica, listener.port), "0.0.0.0", listener.port,
                    http=guarded_protocol(limits), ws="none", **tls)


async def serve(config: GatewayConfig) -> None:
    admin_host, admin_port = split_addr(config.admin_addr)
    sockets = []
    try:
        for lst in config.listeners:
            sockets.append(bind("0.0.0.0", lst.port, "an LLM listener: llm.port / binds[].port"))
        sockets.append(bind(admin_host, admin_port, "the admin listener: config.adminAddr"))
    except ListenError:
        for sock in sockets:
            sock.close()
        raise
    # Each uvicorn server would say "Started server process" and "Uvicorn running on";
    # the line below says it once for all of them. Its warnings and errors still show.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    replica = Replica(config)
    await replica.start()
    servers = [llm_server(replica, lst) for lst in config.listeners]
    servers.append(_uvicorn(build_admin(replica), admin_host, admin_port))

    loop = asyncio.get_running_loop()

    def stop() -> None:
        if all(s.should_exit for s in servers):
            return  # a second signal while already stopping
        log.info("shutting down: finishing in-flight requests")
        replica.ready = False
        for s in servers:
            s.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)

    reloader = Reloader(lambda: replica.config.watch_paths, lambda: load(config.source), replica.reload,
                        logging.getLogger("tollgate.config"))
    watch_task = loop.create_task(reloader.run())
    serving = [loop.create_task(s.serve(sockets=[sock])) for s, sock in zip(servers, sockets)]
    while not all(s.started for s in servers):
        if any(t.done() for t in serving):
            break  # a bind failed; surface it below
        await asyncio.sleep(0.01)
    if all(s.started for s in servers):
        # Start-up objects live forever: keep them out of the cyclic collector's scans.
        gc.collect()
        gc.freeze()
        replica.ready = True
        log.info("listening on %s; admin on %s",
                 ", ".join(f"{lst.port}{' (HTTPS)' if lst.tls else ''}" for lst in config.listeners),
                 config.admin_addr)
    else:
        stop()
    results = await asyncio.gather(*serving, return_exceptions=True)
    watch_task.cancel()
    await replica.close()
    failed = [r for r in results if isinstance(r, BaseException)] + [
        s for s in servers if not s.started]
    if failed:
        raise SystemExit(f"tollgate: a listener failed to start: {failed[0]}")


def event_loop_factory():
    try:
        import uvloop
    except ImportError:  # uvloop is optional; asyncio's own loop works, slower
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(config: GatewayConfig) -> None:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(config))
