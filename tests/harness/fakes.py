"""In-process stand-ins at the request path's seams, for fast unit tests.

`Budgets` answers the rate-limit client protocol (gateway.policies.remote_ratelimit.
RemoteClient) from plain counters; `Upstream` is a provider's response (the only part
the standards allow to be faked); `call_for` builds a parsed Call from a config text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path

from starlette.datastructures import Headers

from gateway.call import Call
from gateway.config import load
from gateway.http1 import HTTPError
from gateway.llm import Dialect, parse_request


class Budgets:
    """The rate-limit service as the gateway's policy sees it (RemoteClient): one remaining
    figure per descriptor label, reservations all-or-nothing under an id, elastic grants,
    and absolute settles applied once per id (everything recorded)."""

    def __init__(self, **remaining: int) -> None:
        self.remaining = dict(remaining)  # "user_id=mike" -> units left
        self.reserves: list[dict] = []
        self.settles: list[dict] = []
        self._held: dict[str, dict[str, int]] = {}  # id -> label -> amount reserved
        self._closed: set[str] = set()

    @staticmethod
    def label(descriptor: dict) -> str:
        return ",".join(f"{e['key']}={e['value']}" for e in descriptor["entries"])

    async def reserve(self, target, rid: str, lease: float, descriptors: list[dict]) -> tuple[int, dict]:
        self.reserves.append({"id": rid, "lease": lease, "descriptors": descriptors})
        left = [self.remaining.get(self.label(d), 10**12) for d in descriptors]
        grants = [math.floor((room - d["hits_addend"]) / d["per_grant"]) for d, room in zip(descriptors, left)
                  if "per_grant" in d]
        granted = min(grants) if grants else None
        takes = [d["hits_addend"] + (math.ceil(granted * d["per_grant"]) if "per_grant" in d else 0)
                 for d in descriptors]
        ok = (granted is None or granted >= 1) and all(t <= room for t, room in zip(takes, left))
        statuses = []
        for d, room, take in zip(descriptors, left, takes):
            after = room - take if ok else room
            statuses.append({"code": "OK" if ok else "OVER_LIMIT", "limitRemaining": max(after, 0),
                             "currentLimit": {"requestsPerUnit": 10**12, "unit": "DAY"},
                             "durationUntilReset": "60s", "resetsAt": "2026-12-03T00:00:00Z"})
        if not ok:
            return 429, {"overallCode": "OVER_LIMIT", "statuses": statuses}
        self._held[rid] = {}
        for d, room, take in zip(descriptors, left, takes):
            self.remaining[self.label(d)] = room - take
            self._held[rid][self.label(d)] = take
        return 200, {"overallCode": "OK", "statuses": statuses, "granted": granted if grants else 0}

    def settle(self, target, rid: str, descriptors: list[dict]) -> None:
        self.settles.append({"id": rid, "descriptors": descriptors})
        if rid in self._closed:
            return
        self._closed.add(rid)
        held = self._held.pop(rid, {})
        for d in descriptors:
            label = self.label(d)
            self.remaining[label] = self.remaining.get(label, 10**12) + held.get(label, 0) - d["hits_addend"]

    async def budget(self, target, descriptors: list[dict]) -> tuple[int, dict]:
        return 200, {"statuses": [{"code": "OK", "limitRemaining": self.remaining.get(self.label(d), 0),
                                   "currentLimit": {"requestsPerUnit": 10**12, "unit": "DAY"}}
                                  for d in descriptors]}


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
