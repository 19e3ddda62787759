"""GET /v1/models: the models a route can serve, as the client's SDK lists them.

What is listed is what a client may put in `model`. In the `llm:` form an entry with an
exact name lists that name. A glob entry (`gpt-*`, `*`) lists its fixed upstream model
when it has one (`params.model`), and otherwise the provider's own list, fetched with
the backend's credential and kept for ten minutes: the shipped config is all globs, and
`client.models.list()` should still show what a request may name. In the `binds:` form a
backend's `ai.name` is a label, not a model: it lists its fixed model
(`provider.openAI.model`), or else the provider's list. A name is listed only under the
backend a request for it would reach, and only if the caller's key allows it."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from gateway.config.runtime import Backend, Route
from gateway.http1 import HTTPError
from gateway.llm.outbound import MODELS_PATH, models_headers
from gateway.policies.apikey import Identity
from gateway.upstream import UpstreamError, join_url

log = logging.getLogger("tollgate")

LIST_TTL = 600.0  # seconds a provider's list is kept; providers add models rarely
RETRY_AFTER_FAILURE = 30.0  # a provider that failed is asked again after this, not per request
FETCH_TIMEOUT = 10.0
GLOB_CHARS = frozenset("*?[")


def is_glob(name: str) -> bool:
    return not GLOB_CHARS.isdisjoint(name)


def by_name_only(route: Route, backend: Backend) -> bool:
    """A binds-form backend with a fixed model that a request naming the model does not
    reach (one after the first: that name reaches the first). Its own name does."""
    return not route.model_routing and backend.model is not None and route.backend_for(backend.name) is backend


class ModelDirectory:
    """The provider lists behind glob entries, fetched once per TTL per backend."""

    def __init__(self, upstream) -> None:  # gateway.upstream.Upstream
        self._upstream = upstream
        self._lists: dict[Backend, tuple[float, tuple[str, ...]]] = {}
        self._fetching: dict[Backend, asyncio.Task] = {}

    async def names(self, route: Route, identity: Identity | None, connect_timeout: float | None) -> list[str]:
        listed: dict[str, None] = {}
        for backend in route.backends:
            candidates = await self._candidates(route, backend, connect_timeout)
            reaching = [n for n in candidates if route.backend_for(n) is backend]  # else another serves it
            if not reaching and by_name_only(route, backend):
                reaching = [backend.name]
            listed.update(dict.fromkeys(reaching))
        return sorted(n for n in listed if identity is None or identity.allows(n))

    async def _candidates(self, route: Route, backend: Backend, connect_timeout: float | None) -> tuple[str, ...]:
        """The names a request may send to `backend`, before checking that none other takes them."""
        if route.model_routing and not is_glob(backend.name):
            return (backend.name,)  # llm form: an exact entry's name is what clients ask for
        if backend.model:
            return (backend.model,)  # whatever a request names, this model answers
        return await self._provider_list(backend, connect_timeout)

    async def _provider_list(self, backend: Backend, connect_timeout: float | None) -> tuple[str, ...]:
        cached = self._lists.get(backend)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        task = self._fetching.get(backend)
        if task is None:  # one fetch however many clients ask at once
            task = self._fetching[backend] = asyncio.ensure_future(self._fetch(backend, connect_timeout))
            task.add_done_callback(lambda _: self._fetching.pop(backend, None))
        return await asyncio.shield(task)

    async def _fetch(self, backend: Backend, connect_timeout: float | None) -> tuple[str, ...]:
        url = join_url(backend.base_url, MODELS_PATH)
        try:
            response = await self._upstream.send(url, models_headers(backend.provider, backend.api_key), b"",
                                                 FETCH_TIMEOUT, backend.tls, connect_timeout, method="GET")
            try:
                raw = await response.read()
            finally:
                response.release()
            if response.status != 200:
                raise UpstreamError(f"HTTP {response.status}")
            names = tuple(sorted({m["id"] for m in json.loads(raw)["data"]
                                  if isinstance(m, dict) and isinstance(m.get("id"), str)}))
        except (UpstreamError, HTTPError, TimeoutError, ValueError, KeyError, TypeError) as e:
            log.warning("GET /v1/models: the model list of backend %r (%s) is unavailable (%s); "
                        "its glob lists nothing for %gs", backend.name, backend.provider, e, RETRY_AFTER_FAILURE)
            self._lists[backend] = (time.monotonic() + RETRY_AFTER_FAILURE, ())
            return ()
        self._lists[backend] = (time.monotonic() + LIST_TTL, names)
        return names


def model_list(names: list[str], anthropic: bool) -> bytes:
    """The list in the caller's dialect: Anthropic's SDK sends `anthropic-version`."""
    if anthropic:
        data = [{"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"} for n in names]
        body = {"data": data, "has_more": False, "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None}
    else:
        body = {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "tollgate"}
                                           for n in names]}
    return json.dumps(body).encode() + b"\n"
