"""The LLM listener: one request's path from key to upstream.

Plain ASGI, as the rate-limit service's decision path: the config's own routes
(they change on reload) dispatch every request, and every error is answered here
in the client's dialect, so a framework's routing, exception and middleware
layers would only add per-request cost (~10% of the gateway's CPU when measured).
The admin listener (/metrics, /healthz) is an ordinary FastAPI app.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from dataclasses import dataclass, field

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.accounting import Admission, BudgetExceeded, Demand, limit_headers
from gateway.auth import AuthError, Identity
from gateway.cel import build_activation
from gateway.config.runtime import Backend, Route
from gateway.errors import GatewayError, error_body
from gateway.llm import (
    BadRequest, Dialect, LLMRequest, build_upstream, estimate_tokens, parse_request, upper_bound_tokens,
)
from gateway.relay import relay
from gateway.state import Gateway
from gateway.policies.ratelimit_client import RemoteUnavailable
from gateway.upstream import UpstreamError, join_url

JSON = "application/json"
log = logging.getLogger("tollgate.app")


@dataclass
class Call:
    """Everything one request carries from admission to settle."""

    started: float
    route: Route
    dialect: Dialect
    identity: Identity | None = None
    req: LLMRequest | None = None
    backend: Backend | None = None
    admission: Admission | None = None
    request: Request | None = field(default=None, repr=False)


def endpoint(method: str, path: str) -> str | None:
    if method == "POST" and path.endswith("/chat/completions"):
        return "chat"
    if method == "POST" and path.endswith("/v1/messages"):
        return "messages"
    if method == "GET" and path.endswith("/v1/models"):
        return "models"
    return None


def select_backend(route: Route, model: str) -> Backend:
    """Exact name first, then the first matching glob; a lone binds-form backend takes all."""
    backends = route.backends
    for b in backends:
        if b.name == model:
            return b
    for b in backends:
        if fnmatch.fnmatchcase(model, b.name):
            return b
    if not route.model_routing and backends:
        return backends[0]
    raise GatewayError(404, "model_not_found", f"model {model!r} is not configured on this gateway")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError(413, "body_too_large", f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, "body_too_large", f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def models_list(route: Route, identity: Identity | None) -> Response:
    names = sorted({b.name for b in route.backends if not any(c in b.name for c in "*?[")})
    if identity is not None:
        names = [n for n in names if identity.allows(n)]
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "tollgate"} for n in names]
    return Response(json.dumps({"object": "list", "data": data}), media_type=JSON)


class Handler:
    def __init__(self, gw: Gateway, port: int) -> None:
        self.gw = gw
        self.port = port

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        path = request.scope["path"]
        route = self.gw.route(self.port, path)
        target = (route.policies.url_rewrite if route else None) or path
        kind = endpoint(request.method, target)
        dialect = Dialect.ANTHROPIC if kind == "messages" else Dialect.OPENAI
        if route is None or kind is None:
            return self.fail(started, dialect, GatewayError(404, "not_found", f"no route for {request.method} {path}"))
        call = Call(started=started, route=route, dialect=dialect, request=request)
        try:
            call.identity = self.authenticate(route, request)
            if kind == "models":
                return self.done(call, models_list(route, call.identity), "ok")
            return await self.forward(call)
        except GatewayError as e:
            return self.fail(started, dialect, e)
        except BudgetExceeded as e:
            return self.fail(started, dialect, GatewayError(
                429, "rate_limited", str(e), limit_headers(e.verdict)))
        except RemoteUnavailable as e:
            return self.fail(started, dialect, GatewayError(
                503, "ratelimit_unavailable", f"rate limit service unavailable (failClosed): {e}"))

    @staticmethod
    def authenticate(route: Route, request: Request) -> Identity | None:
        policy = route.policies.api_key
        if policy is None:
            return None
        try:
            return policy.authenticate(request.headers)
        except AuthError as e:
            raise GatewayError(401, "unauthorized", str(e)) from e

    async def forward(self, call: Call) -> Response:
        gw, route, request = self.gw, call.route, call.request
        try:
            raw = await read_body(request, gw.config.max_body_bytes)
        except ClientDisconnect:
            raise GatewayError(400, "client_disconnected", "client closed the connection mid-body") from None
        try:
            call.req = req = parse_request(call.dialect, raw)
        except BadRequest as e:
            raise GatewayError(400, "bad_request", str(e)) from e
        call.backend = backend = select_backend(route, req.model)
        model = req.model or backend.model or backend.name
        if call.identity is not None and not call.identity.allows(model):
            raise GatewayError(403, "model_not_allowed", f"model {model!r} is not allowed for this API key")
        call.admission = await gw.accounting.admit(route, self.demand(call))
        try:
            upstream_call = build_upstream(
                req, backend.provider, backend.model, backend.api_key or route.policies.backend_auth,
                max_tokens=call.admission.max_tokens, client_headers=request.headers)
        except BadRequest as e:
            gw.accounting.settle(call.admission, None)
            raise GatewayError(400, "bad_request", str(e)) from e
        url = join_url(backend.base_url, upstream_call.path)
        try:
            resp = await gw.upstream.send(url, upstream_call.headers, upstream_call.body,
                                          route.policies.request_timeout)
        except UpstreamError as e:
            gw.accounting.settle(call.admission, None)
            reason = "upstream_timeout" if e.status == 504 else "upstream_unreachable"
            raise GatewayError(e.status, reason, str(e)) from e
        return await relay(self, call, resp)

    @staticmethod
    def demand(call: Call) -> Demand:
        req, request = call.req, call.request
        remote = bool(call.route.policies.remote_rate_limit)
        activation = None
        if remote:
            meta = call.identity.metadata if call.identity else None
            base = {"requestModel": req.model}

            def activation(llm: dict | None):
                return build_activation(meta, request.method, request.scope["path"], request.headers,
                                        {**base, **llm} if llm else base)

        return Demand(
            estimate=estimate_tokens(req) if call.backend.tokenize else 0,
            input_bound=upper_bound_tokens(req) if remote else 0,
            max_output=req.max_output_tokens,
            activation=activation,
        )

    def done(self, call: Call, response: Response, reason: str) -> Response:
        self.gw.metrics.request(response.status_code, reason, time.perf_counter() - call.started)
        return response

    def fail(self, started: float, dialect: Dialect, e: GatewayError) -> Response:
        self.gw.metrics.request(e.status, e.reason, time.perf_counter() - started)
        body = error_body(dialect, e.status, e.message)
        return Response(body, status_code=e.status, media_type=JSON, headers=e.headers)


class LLMApp:
    """The ASGI entry of one LLM listener."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return  # no websockets here; uvicorn refuses the upgrade
        try:
            response = await self.handler.handle(Request(scope, receive))
        except Exception:
            # A bug, not a client error: logged with its traceback, answered as a 500.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            response = self.handler.fail(time.perf_counter(), Dialect.OPENAI,
                                         GatewayError(500, "internal_error", "internal gateway error"))
        await response(scope, receive, send)


def build_app(gw: Gateway, port: int) -> LLMApp:
    return LLMApp(Handler(gw, port))
