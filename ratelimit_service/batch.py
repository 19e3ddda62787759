"""POST /v1/batch: many reserve/settle/extend/budget decisions in one HTTP call.

A busy gateway replica sends the decisions that queued up while its previous
call was on the wire as one batch. Each item is a single call's body plus its
`op`, and is answered exactly as /v1/<op> would answer it (status and body),
independently of the others. All the items that need Redis go to it in one
script call, which decides them one after the other, each atomic on its own; a
request that fails in Redis fails alone (its own 500).
"""

from __future__ import annotations

from ratelimit_service.limiter import NO_DECISION, LimiterError
from ratelimit_service.protocol import BUDGET, EXTEND, RESERVE, SETTLE, BadRequest, decode, parse_document
from ratelimit_service.replies import unavailable
from ratelimit_service.service import Plan, Service

MAX_ITEMS = 1000
MAX_BATCH_BODY = 8 << 20  # room for MAX_ITEMS items of several descriptors each
OPS = {"reserve": RESERVE, "settle": SETTLE, "extend": EXTEND, "budget": BUDGET}


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
            raise BadRequest(f"items[{i}].op must be reserve, settle, extend or budget")
        parsed.append((api, item))
    return parsed


async def run_batch(service: Service, items: list[tuple[str, dict]]) -> dict:
    """`{"items": [{"status", "body"}, ...]}` in the order of the items."""
    answers: list[dict | None] = [None] * len(items)
    waiting: list[tuple[int, Plan]] = []  # the items Redis decides
    for i, (api, doc) in enumerate(items):
        try:
            plan = service.plan(api, parse_document(doc, api))
        except BadRequest as e:
            answers[i] = {"status": 400, "body": {"error": str(e)}}
            continue
        if plan.needs_redis:
            waiting.append((i, plan))
        else:
            answers[i] = _answer(service.finish(plan, NO_DECISION))
    if waiting:
        try:
            decisions = await service.limiter.decide_many([plan.call for _, plan in waiting])
        except LimiterError as e:
            decisions = [e] * len(waiting)
        failed = [d for d in decisions if type(d) is LimiterError]
        if failed:
            # Counted per request, logged once per batch; Redis may fail a whole batch at once.
            service.count_failures(failed[0], len(failed))
        for (i, plan), decision in zip(waiting, decisions):
            if type(decision) is LimiterError:
                answers[i] = {"status": 500, "body": unavailable(decision)}
            else:
                answers[i] = _answer(service.finish(plan, decision))
    return {"items": answers}


def _answer(reply: tuple[int, dict]) -> dict:
    return {"status": reply[0], "body": reply[1]}
