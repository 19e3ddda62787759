"""The LLM listener: one request's path, from key to upstream and back, top to bottom.

    route -> apiKey -> parse -> backend and model -> budgets admitted (local, then the
    rate-limit service) -> upstream -> relay (usage settled the moment it is known)

Plain ASGI, as the rate-limit service's decision path: the config's own routes (they
change on reload) dispatch every request, and every error is answered here in the
client's dialect, so a framework's routing, exception and middleware layers would only
add per-request cost (~10% of the gateway's CPU when measured). The admin listener
(/metrics, /healthz) is an ordinary FastAPI app (server.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from starlette.datastructures import Headers

from gateway.accounting import Admission
from gateway.call import Call
from gateway.config.runtime import Backend, Route
from gateway.errors import GatewayError
from gateway.cel import Activation
from gateway.llm import BadRequest, Dialect, Unbounded, build_upstream, parse_request
from gateway.model_list import model_list
from gateway.policies.apikey import AuthError
from gateway.policies.budget import BudgetExceeded, Unresolved
from gateway.ratelimit_client import RemoteUnavailable
from gateway.relay import Relay
from gateway.replica import Replica
from gateway.reply import Reply
from gateway.upstream import UpstreamError, join_url

log = logging.getLogger("tollgate.app")

DRAIN_TIMEOUT = 120.0  # seconds an abandoned stream may take to report its usage


def endpoint(method: str, path: str) -> str | None:
    if method == "POST" and path.endswith("/chat/completions"):
        return "chat"
    if method == "POST" and path.endswith("/v1/messages"):
        return "messages"
    if method == "GET" and path.endswith("/v1/models"):
        return "models"
    if method == "GET" and path.endswith("/v1/budget"):
        return "budget"
    return None


def select_backend(route: Route, model: str) -> Backend:
    backend = route.backend_for(model)
    if backend is None:
        raise GatewayError(404, "model_not_found", f"model {model!r} is not configured on this gateway")
    return backend


async def read_body(receive, headers: Headers, limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError(413, "body_too_large", f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(400, "client_disconnected", "client closed the connection mid-body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, "body_too_large", f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


class Handler:
    def __init__(self, replica: Replica, port: int) -> None:
        self.replica = replica
        self.port = port

    async def handle(self, scope, receive, send) -> None:
        started = time.perf_counter()
        reply = Reply(send, receive)
        path = scope["path"]
        config = self.replica.config
        route = self.replica.route(self.port, path)
        target = (route.policies.url_rewrite if route else None) or path
        kind = endpoint(scope["method"], target)
        dialect = Dialect.ANTHROPIC if kind == "messages" else Dialect.OPENAI
        call = Call(started, config, route, dialect, scope["method"], path, Headers(scope=scope))
        try:
            if route is None or kind is None:
                raise GatewayError(404, "not_found", f"no route for {scope['method']} {path}")
            await self.serve(call, kind, receive, reply)
        except GatewayError as e:
            await self.refuse(call, reply, e)
        except BudgetExceeded as e:
            await self.refuse(call, reply, GatewayError(429, "rate_limited", str(e), e.headers()))
        except Unresolved as e:
            await self.refuse(call, reply, GatewayError(403, "budget_unresolved", str(e)))
        except Unbounded as e:
            await self.refuse(call, reply, GatewayError(400, "unbounded_request", str(e)))
        except RemoteUnavailable as e:
            await self.refuse(call, reply, GatewayError(
                503, "ratelimit_unavailable", f"rate limit service unavailable (failClosed): {e}"))
        except Exception:
            # A bug, not a client error: logged with its traceback, answered as a 500.
            log.exception("unhandled error on %s %s", scope["method"], path)
            await self.refuse(call, reply, GatewayError(500, "internal_error", "internal gateway error"))
        finally:
            seconds = time.perf_counter() - started
            self.replica.metrics.request(call.status, call.reason, seconds)
            self.replica.access_log.write(call, seconds)

    async def serve(self, call: Call, kind: str, receive, reply: Reply) -> None:
        call.identity = self.authenticate(call)
        if kind == "models":
            names = await self.replica.models.names(call.route, call.identity, call.config.connect_timeout)
            await reply.whole(200, model_list(names, anthropic="anthropic-version" in call.headers))
            return
        if kind == "budget":
            await reply.whole(200, await self.budget(call))
            return
        raw = await read_body(receive, call.headers, call.config.max_body_bytes)
        try:
            req = parse_request(call.dialect, raw)
        except BadRequest as e:
            raise GatewayError(400, "bad_request", str(e)) from e
        call.bind(req, select_backend(call.route, req.model))
        if call.identity is not None and not call.identity.allows(call.model):
            raise GatewayError(403, "model_not_allowed", f"model {call.model!r} is not allowed for this API key")
        async with await self.replica.accounting.admit(call) as admission:
            relay = await self.send_upstream(call, admission)
            if not relay.ok:
                raise await relay.error()  # charged nothing: the admission releases on the way out
            if call.req.stream:
                await self.stream(call, relay, admission, reply)
            else:
                body = await relay.body()
                admission.usage = relay.usage
                admission.settle()
                await reply.whole(relay.status, body, admission.headers())

    async def budget(self, call: Call) -> bytes:
        """GET /v1/budget: the budgets that apply to the caller's own key; charges nothing."""
        if call.identity is None:
            raise GatewayError(401, "unauthorized", "GET /v1/budget needs your API key: it shows that key's budgets")
        policy = call.route.policies.remote_rate_limit
        call.activation = Activation(call.identity.metadata, call.method, call.path, call.headers)
        try:
            rows = await self.replica.accounting.view(policy, call.activation) if policy else []
        except RemoteUnavailable as e:
            raise GatewayError(503, "ratelimit_unavailable", f"rate limit service unavailable: {e}") from e
        return json.dumps({"budgets": rows}).encode() + b"\n"

    def authenticate(self, call: Call):
        policy = call.route.policies.api_key
        if policy is None:
            return None
        try:
            return policy.authenticate(call.headers)
        except AuthError as e:
            raise GatewayError(401, "unauthorized", str(e)) from e

    async def send_upstream(self, call: Call, admission: Admission) -> Relay:
        backend = call.backend
        try:
            outbound = build_upstream(
                call.req, backend.provider, backend.model, backend.api_key or call.route.policies.backend_auth,
                max_tokens=admission.max_tokens, client_headers=call.headers)
        except BadRequest as e:
            raise GatewayError(400, "bad_request", str(e)) from e
        url = join_url(backend.base_url, outbound.path)
        try:
            response = await self.replica.upstream.send(url, outbound.headers, outbound.body,
                                                        call.route.policies.request_timeout, backend.tls,
                                                        call.config.connect_timeout)
        except UpstreamError as e:
            reason = "upstream_timeout" if e.status == 504 else "upstream_unreachable"
            raise GatewayError(e.status, reason, str(e)) from e
        return Relay(call, response)

    async def stream(self, call: Call, relay: Relay, admission: Admission, reply: Reply) -> None:
        """Relays the stream; settles the moment usage is known. A client that leaves does
        not stop the accounting: the stream is read on until its usage arrives."""
        admission.usage = relay.usage  # a stream that breaks off is charged what was reported
        await reply.stream(relay.status, admission.headers())
        try:
            async with asyncio.timeout(None) as drain:
                async for piece in relay.stream():
                    if relay.usage_known:
                        admission.settle()
                    if not reply.gone:
                        await reply.send(piece)
                    elif relay.usage_known:
                        break
                    elif drain.when() is None:
                        drain.reschedule(asyncio.get_running_loop().time() + DRAIN_TIMEOUT)
        except TimeoutError:
            log.warning("abandoned stream sent no usage within %gs; charging what it reported", DRAIN_TIMEOUT)
        if reply.gone:
            call.status, call.reason = 499, "client_disconnected"
        await reply.finish()

    async def refuse(self, call: Call, reply: Reply, e: GatewayError) -> None:
        call.status, call.reason = e.status, e.reason
        if not reply.started:
            await reply.whole(e.status, e.render(call.dialect), e.headers)


class LLMApp:
    """The ASGI entry of one LLM listener."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return  # no websockets here; uvicorn refuses the upgrade
        await self.handler.handle(scope, receive, send)


def build_app(replica: Replica, port: int) -> LLMApp:
    return LLMApp(Handler(replica, port))
