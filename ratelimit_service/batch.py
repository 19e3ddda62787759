"""POST /v1/batch: many reserve/settle decisions in one HTTP call.

A busy gateway replica sends the decisions that queued up while its previous
call was on the wire as one batch. Each item is a single call's body plus its
`op`, and is answered exactly as /v1/reserve or /v1/settle would answer it
(status and body), independently of the others. The items run concurrently on
the event loop, so their Lua calls leave in one pipelined write to Redis rather
than one round trip per item.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from ratelimit_service.protocol import RESERVE, SETTLE, BadRequest, decode

MAX_ITEMS = 1000
MAX_BATCH_BODY = 8 << 20  # room for MAX_ITEMS items of several descriptors each
OPS = {"reserve": RESERVE, "settle": SETTLE}

Answer = Callable[[str, object], Awaitable[tuple[int, dict]]]


def parse_batch(raw: bytes) -> list[tuple[str, dict]]:
    """(api, item without its op) per item; raises BadRequest if the batch itself is malformed.

    Only what decides how to run an item is checked here; an item's own content
    is left to the single call's parser, so a bad item fails alone.
    """
    doc = decode(raw)
    if type(doc) is not dict:
        raise BadRequest("the batch must be a JSON object")
    unknown = next((k for k in doc if k != "items"), None)
    if unknown is not None:
        raise BadRequest(f'unknown field "{unknown}"')
    items = doc.get("items")
    if type(items) is not list:
        raise BadRequest("items: expected a list")
    if len(items) > MAX_ITEMS:
        raise BadRequest(f"items: {len(items)} items, at most {MAX_ITEMS} per batch")
    parsed: list[tuple[str, dict]] = []
    for i, item in enumerate(items):
        if type(item) is not dict:
            raise BadRequest(f"items[{i}] must be an object")
        op = item.pop("op", None)  # the rest is exactly a single call's body
        api = OPS.get(op) if type(op) is str else None
        if api is None:
            raise BadRequest(f"items[{i}].op must be reserve or settle")
        parsed.append((api, item))
    return parsed


async def run_batch(answer: Answer, items: list[tuple[str, dict]]) -> dict:
    """`{"items": [{"status", "body"}, ...]}` in the order of the items."""
    results = await asyncio.gather(*(answer(api, doc) for api, doc in items))
    return {"items": [{"status": status, "body": body} for status, body in results]}
