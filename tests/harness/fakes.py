"""In-process stand-ins at the request path's seams, for fast unit tests.

`Budgets` answers the rate-limit client protocol (gateway.policies.remote_ratelimit.
RemoteClient) from plain counters; `Upstream` is a provider's response (the only part
the standards allow to be faked); `call_for` builds a parsed Call from a config text.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from starlette.datastructures import Headers

from gateway.call import Call
from gateway.config import load
from gateway.http1 import HTTPError
from gateway.llm import Dialect, parse_request


class Budgets:
    """The rate-limit service as the gateway sees it: one remaining figure per descriptor
    label, reservations all-or-nothing, settles applied at once (and recorded)."""

    def __init__(self, **remaining: int) -> None:
        self.remaining = dict(remaining)  # "user_id=mike" -> tokens left
        self.reserves: list[list[dict]] = []
        self.settles: list[list[dict]] = []

    @staticmethod
    def label(descriptor: dict) -> str:
        return ",".join(f"{e['key']}={e['value']}" for e in descriptor["entries"])

    async def reserve(self, host: str, domain: str, descriptors: list[dict], timeout: float) -> tuple[int, dict]:
        self.reserves.append(descriptors)
        left = [self.remaining.get(self.label(d), 10**9) for d in descriptors]
        elastic = [d for d in descriptors if "max_hits" in d]
        granted = min((left[descriptors.index(d)] for d in elastic), default=None)
        ok = all(room >= (granted if "max_hits" in d else d["hits_addend"]) for d, room in zip(descriptors, left))
        if granted is not None and granted < max(d["hits_addend"] for d in elastic):
            ok = False
        statuses = []
        for d, room in zip(descriptors, left):
            take = granted if "max_hits" in d else d["hits_addend"]
            after = room - take if ok else room
            if ok:
                self.remaining[self.label(d)] = after
            statuses.append({"code": "OK" if ok else "OVER_LIMIT", "limitRemaining": max(after, 0),
                             "currentLimit": {"requestsPerUnit": 10**9, "unit": "DAY"}, "durationUntilReset": "60s"})
        body = {"overallCode": "OK" if ok else "OVER_LIMIT", "statuses": statuses}
        if ok:
            body["granted"] = granted if granted is not None else max(d["hits_addend"] for d in descriptors)
        return (200 if ok else 429), body

    def settle(self, host: str, domain: str, descriptors: list[dict], timeout: float) -> None:
        self.settles.append(descriptors)
        for d in descriptors:
            self.remaining[self.label(d)] = self.remaining.get(self.label(d), 10**9) - d["hits_addend"]


class Upstream:
    """A provider's response, as gateway.http1.Response hands it over: status now, the body
    in the pieces given; `broken` makes the body break off after them."""

    def __init__(self, status: int, pieces: Iterable[bytes], broken: bool = False) -> None:
        self.status = status
        self.pieces = list(pieces)
        self.broken = broken
        self.released = self.closed = False

    async def read(self) -> bytes:
        if self.broken:
            raise HTTPError("connection closed: by the peer")
        return b"".join(self.pieces)

    async def chunks(self):
        for piece in self.pieces:
            yield piece
        if self.broken:
            raise HTTPError("connection closed: by the peer")

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


def call_for(tmp_path: Path, config_text: str, body: dict, key: str | None = None,
             dialect: Dialect = Dialect.OPENAI) -> Call:
    """A Call for `body` on the only route of `config_text`, authenticated and parsed."""
    path = tmp_path / "config.yaml"
    path.write_text(config_text)
    config = load(path)
    route = config.listeners[0].routes[0]
    headers = Headers({"authorization": f"Bearer {key}"} if key else {})
    call = Call(time.perf_counter(), config, route, dialect, "POST", "/v1/chat/completions", headers)
    if route.policies.api_key is not None:
        call.identity = route.policies.api_key.authenticate(headers)
    req = parse_request(dialect, __import__("json").dumps(body).encode())
    call.bind(req, route.backends[0])
    return call
