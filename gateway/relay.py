"""The response side: relay the upstream's answer, settle its usage, record spend.

Streams are relayed chunk by chunk as they arrive. Usage is settled the moment the
provider reports it, before the stream's last bytes reach the client. A client that
walks away mid-stream does not stop the accounting: the rest of the upstream stream
is drained in the background until its usage arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, AsyncIterator

from starlette.responses import Response, StreamingResponse

from gateway.cel import CelError, build_activation
from gateway.errors import GatewayError
from gateway.http1 import HTTPError, Response as UpstreamResponse
from gateway.llm import ResponseAdapter, Usage, response_adapter, translate_error
from gateway.metrics import Spend

if TYPE_CHECKING:
    from gateway.app import Call, Handler

log = logging.getLogger("tollgate.relay")

DRAIN_TIMEOUT = 120.0  # seconds an abandoned stream may take to report usage
SYSTEMS = {"openAI": "openai", "anthropic": "anthropic"}


def metric_fields(handler: "Handler", call: "Call") -> dict[str, str]:
    """The `config.metrics.fields.add` labels; cached per key when they read only `apiKey`."""
    gw = handler.gw
    fields = gw.config.metrics_fields
    if not fields:
        return {}
    key_id = call.identity.key_id if call.identity else ""
    cached = gw.label_cache.get(key_id) if gw.labels_per_key else None
    if cached is not None:
        return cached
    request = call.request
    activation = build_activation(
        call.identity.metadata if call.identity else None,
        request.method, request.scope["path"], request.headers, {"requestModel": call.req.model})
    out = {}
    for label, expr in fields.items():
        try:
            value = expr.evaluate(activation)
        except CelError:
            value = ""
        out[label] = "" if value is None else str(value)
    if gw.labels_per_key:
        gw.label_cache[key_id] = out
    return out


def spend_of(handler: "Handler", call: "Call", usage: Usage) -> Spend:
    backend = call.backend
    model = call.req.model or backend.model or backend.name
    catalog = handler.gw.config.model_catalog
    price = catalog.get(model) or (catalog.get(backend.model) if backend.model else None)
    cost = 0.0
    if price is not None:
        cost = (usage.input_tokens * price.input_per_million
                + usage.output_tokens * price.output_per_million) / 1_000_000
    return Spend(model=model, system=SYSTEMS.get(backend.provider, backend.provider),
                 usage=usage, cost_usd=cost, fields=metric_fields(handler, call))


def settle(handler: "Handler", call: "Call", usage: Usage) -> None:
    """Charges the usage once and reports the spend; safe to call again."""
    if call.admission.settled:
        return
    handler.gw.accounting.settle(call.admission, usage)
    handler.gw.metrics.spend(spend_of(handler, call, usage))


async def relay(handler: "Handler", call: "Call", resp: UpstreamResponse) -> Response:
    adapter = response_adapter(call.req, call.backend.provider)
    if resp.status >= 300:
        return await relay_error(handler, call, resp)
    if call.req.stream:
        headers = call.admission.headers()
        return StreamingResponse(stream(handler, call, resp, adapter), status_code=resp.status,
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", **headers})
    try:
        raw = await resp.read()
    except (HTTPError, TimeoutError) as e:
        handler.gw.accounting.settle(call.admission, None)
        status = 504 if isinstance(e, TimeoutError) else 502
        raise GatewayError(status, "upstream_broken", f"upstream response failed: {type(e).__name__}") from e
    finally:
        resp.release()
    body = adapter.convert(raw)
    settle(handler, call, adapter.usage)
    response = Response(body, status_code=resp.status, media_type="application/json",
                        headers=call.admission.headers())
    return handler.done(call, response, "ok")


async def relay_error(handler: "Handler", call: "Call", resp: UpstreamResponse) -> Response:
    """An upstream error is passed on in the client's dialect and charged nothing.

    A 401/403 from the provider is about the gateway's upstream key, not the client's
    virtual key, so it becomes a 502; its body (which may echo part of the upstream
    key) is not relayed.
    """
    try:
        raw = await resp.read()
    except (HTTPError, TimeoutError):
        raw = b""  # the status alone is passed on
    finally:
        resp.release()
    handler.gw.accounting.settle(call.admission, None)
    if resp.status in (401, 403):
        raise GatewayError(502, "upstream_auth", f"the upstream provider rejected the gateway's "
                           f"credentials (HTTP {resp.status}); check the backend's apiKey")
    body = translate_error(call.req, call.backend.provider, resp.status, raw)
    return handler.done(call, Response(body, status_code=resp.status, media_type="application/json"),
                        "upstream_error")


async def stream(handler: "Handler", call: "Call", resp: UpstreamResponse,
                 adapter: ResponseAdapter) -> AsyncIterator[bytes]:
    completed = False
    try:
        async for chunk in resp.chunks():
            out = adapter.feed(chunk)
            if adapter.usage_known:
                settle(handler, call, adapter.usage)
            if out:
                yield out
        tail = adapter.finish()
        if tail:
            yield tail
        completed = True
    except (HTTPError, TimeoutError) as e:
        log.warning("upstream stream broke: %s", type(e).__name__)
        completed = True  # nothing more will come; charge what was reported
    finally:
        if completed:
            resp.release()
            settle(handler, call, adapter.usage)
            handler.gw.metrics.request(resp.status, "ok", time.perf_counter() - call.started)
        else:
            handler.gw.spawn(drain(handler, call, resp, adapter))


async def drain(handler: "Handler", call: "Call", resp: UpstreamResponse,
                adapter: ResponseAdapter) -> None:
    """Reads an abandoned stream to its end so its usage is still charged."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            async for chunk in resp.chunks():
                adapter.feed(chunk)
                if adapter.usage_known:
                    break
    except (HTTPError, TimeoutError):
        pass
    finally:
        resp.close()
        settle(handler, call, adapter.usage)
        handler.gw.metrics.request(499, "client_disconnected", time.perf_counter() - call.started)
