"""The HTTP app: decisions on a lean ASGI path, the rest in FastAPI.

POST /json (envoy), /v1/reserve, /v1/settle, /v1/extend, /v1/budget and
/v1/batch (Tollgate) are served straight from ASGI: no routing tables, no
middleware, no pydantic per request; that is what lets one process pass 5,000
decisions/s. GET /healthcheck and GET /metrics and the lifespan (config
watcher, Redis client) live in an ordinary FastAPI app that receives
everything else.

With a token configured, every /v1/* path (unknown ones included, so nothing
can be probed) needs `Authorization: Bearer <token>`; /json needs it only when
protected, since envoy's /json is open. /healthcheck and /metrics stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response

from ratelimit_service.batch import MAX_BATCH_BODY, parse_batch, run_batch
from ratelimit_service.limiter import LimiterError
from ratelimit_service.protocol import BUDGET, EXTEND, JSON, RESERVE, SETTLE, BadRequest, decode, parse_document
from ratelimit_service.replies import error_body, render, unavailable
from ratelimit_service.service import Service
from tollgate_common.watch import Reloader
from ratelimit_service.stats import CONTENT_TYPE, Stats

log = logging.getLogger("tollgate.ratelimit")

MAX_BODY = 1 << 20
BATCH = "batch"
DECISION_PATHS = {
    "/json": JSON, "/v1/reserve": RESERVE, "/v1/settle": SETTLE, "/v1/extend": EXTEND, "/v1/budget": BUDGET,
    "/v1/batch": BATCH,
}
HEALTH_TIMEOUT = 1.0  # a PING slower than this is a Redis the decisions cannot count on
_JSON_HEADERS = [(b"content-type", b"application/json")]
_UNAUTHORIZED = error_body("missing or invalid bearer token (Authorization: Bearer <TOLLGATE_RATELIMIT_TOKEN>)")


def create_app(service: Service, stats: Stats, reloader: Reloader | None = None, token: str | None = None,
               protect_json: bool = False):
    return DecisionApp(_admin_app(service, stats, reloader), service, stats, token, protect_json)


def _admin_app(service: Service, stats: Stats, reloader: Reloader | None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        watcher = asyncio.create_task(reloader.run()) if reloader else None
        try:
            yield
        finally:
            if watcher:
                watcher.cancel()
            await service.limiter.close()
            stats.shutdown()

    app = FastAPI(title="tollgate-ratelimit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthcheck", response_class=PlainTextResponse)
    async def healthcheck() -> PlainTextResponse:
        """200 OK once the config is loaded and Redis answers a PING within HEALTH_TIMEOUT."""
        try:
            await asyncio.wait_for(service.limiter.backend.call("PING"), HEALTH_TIMEOUT)
        except asyncio.TimeoutError:
            return PlainTextResponse(f"redis unavailable: no answer to PING within {HEALTH_TIMEOUT:g}s", 503)
        except Exception as e:  # whatever stops Redis answering makes the service unhealthy
            return PlainTextResponse(f"redis unavailable: {e}", 503)
        return PlainTextResponse("OK")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(stats.render(), media_type=CONTENT_TYPE)

    return app


def _guarded(path: str, protect_json: bool) -> bool:
    return path.startswith("/v1/") or path == "/v1" or (protect_json and path == "/json")


def _authorized(scope, token: bytes) -> bool:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)
    return False


class DecisionApp:
    """ASGI entry: decision paths here, everything else to the admin app."""

    def __init__(self, admin: FastAPI, service: Service, stats: Stats, token: str | None = None,
                 protect_json: bool = False):
        self.admin = admin
        self.service = service
        self.stats = stats
        self.token = token.encode() if token else None
        self.protect_json = protect_json

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and self.token and _guarded(path, self.protect_json) \
                and not _authorized(scope, self.token):
            await self._reply(send, path, 401, _UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
            return
        api = DECISION_PATHS.get(path) if scope["type"] == "http" else None
        if api is None:
            await self.admin(scope, receive, send)
            return
        if scope["method"] != "POST":
            await self._reply(send, path, 405, error_body(f"{path} takes POST"), [(b"allow", b"POST")])
            return
        limit = MAX_BATCH_BODY if api is BATCH else MAX_BODY
        raw = await _read_body(receive, limit)
        if raw is None:
            status, body = 413, error_body(f"request body over {limit} bytes")
        else:
            try:
                status, body = await (self._batch(raw) if api is BATCH else self._decide(api, raw))
            except BadRequest as e:  # the body as a whole is malformed
                status, body = 400, error_body(str(e))
        await self._reply(send, path, status, body)

    async def _decide(self, api: str, raw: bytes) -> tuple[int, bytes]:
        status, body = await self._answer(api, decode(raw))
        return status, render(body)

    async def _batch(self, raw: bytes) -> tuple[int, bytes]:
        return 200, render(await run_batch(self.service, parse_batch(raw)))

    async def _answer(self, api: str, doc) -> tuple[int, dict]:
        """What a single decision call answers to this decoded body: (status, body)."""
        try:
            return await self.service.decide(api, parse_document(doc, api))
        except BadRequest as e:
            return 400, {"error": str(e)}
        except LimiterError as e:
            self.service.count_failures(e)
            return 500, unavailable(e)

    async def _reply(self, send, path: str, status: int, body: bytes, extra: list | None = None) -> None:
        # An unknown /v1 path (a 401) is counted under one label: probes must not grow the metrics.
        self.stats.requests[(path if path in DECISION_PATHS else "/v1/*", str(status))] += 1
        headers = _JSON_HEADERS + [(b"content-length", b"%d" % len(body))] + (extra or [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None if it is over `limit` bytes."""
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            return None
    return body if len(body) <= limit else None
