"""Reply shapes: protojson statuses for /json and /v1, and the budget view.

Protojson rules: upper-case enum names, zero values omitted, durations as
"37s" (whole seconds, rounded up). /json keeps envoy's fields exactly; /v1
statuses add `retryAfter` and `resetsAt` (the clock time of the reset: for a
calendar window, its boundary) to a descriptor that refused, and mark a dollar
budget's `currentLimit` with `"usd": true`. A `shadow_mode` descriptor answers
OK, as envoy's base limiter does, whatever its bucket says.
"""

from __future__ import annotations

from datetime import datetime, timezone

import orjson

from ratelimit_service.limiter import JSON, Outcome
from ratelimit_service.match import ALGORITHM_NAMES, Limit

MAX_UINT32 = 2**32 - 1

OK_STATUS = {"code": "OK"}
UNLIMITED_STATUS = {"code": "OK", "limitRemaining": MAX_UINT32}


def duration(ms: int) -> str:
    """A protojson Duration in whole seconds, rounded up."""
    return f"{-(-ms // 1000)}s"


def timestamp(ms: int) -> str:
    """RFC 3339 in UTC, whole seconds rounded up (a calendar boundary comes out exact)."""
    return datetime.fromtimestamp(-(-ms // 1000), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(body: dict) -> bytes:
    return orjson.dumps(body)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def unavailable(error: Exception) -> dict:
    """The body of the 500 that answers a request Redis failed."""
    return {"error": f"rate limit store unavailable: {error}"}


def refused(outcome: Outcome, limit: Limit) -> bool:
    """Whether this status says OVER_LIMIT: shadow_mode never does."""
    return outcome.over and not limit.shadow_mode


def status(api: str, limit: Limit, outcome: Outcome, now_ms: int) -> dict:
    """A decision's status for one limited descriptor."""
    current = limit.current_limit if api == JSON else limit.v1_limit
    reset = duration(outcome.reset_ms)
    if not refused(outcome, limit):
        if outcome.remaining > 0 and not outcome.over:
            return {"code": "OK", "currentLimit": current, "limitRemaining": outcome.remaining,
                    "durationUntilReset": reset}
        # protojson omits zero values: nothing left (or in debt) has no limitRemaining
        return {"code": "OK", "currentLimit": current, "durationUntilReset": reset}
    body = {"code": "OVER_LIMIT", "currentLimit": current, "durationUntilReset": reset}
    if api != JSON:
        body["retryAfter"] = duration(max(outcome.retry_ms, 1000))
        # The service's clock, not the gateway's: the two may differ by a drill's offset.
        body["resetsAt"] = timestamp(now_ms + outcome.reset_ms)
    return body


def budget_status(limit: Limit, outcome: Outcome, now_ms: int) -> dict:
    """The budget view of one limited descriptor: what is spent and left, and when it resets.

    `spent` is the level: what was charged, open reservations included, so
    spent + limitRemaining = the limit until the bucket goes into debt. Both
    are always present (a view for people, not protojson's zero omission).
    """
    body = status("budget", limit, outcome, now_ms)
    body["limitRemaining"] = max(outcome.remaining, 0)
    body["spent"] = limit.requests_per_unit - outcome.remaining
    body["resetsAt"] = timestamp(now_ms + outcome.reset_ms)
    body["algorithm"] = ALGORITHM_NAMES[limit.algorithm]
    return body
