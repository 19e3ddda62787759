"""Calendar windows: where a day, week, month or year starts in a timezone, and the service's clock.

A calendar window starts at local midnight (day), Monday 00:00 (week), the 1st
00:00 (month) or January 1st 00:00 (year) in the limit's IANA timezone, daylight
saving included: a day may last 23 or 25 hours. The service computes the
boundaries with the timezone database and hands the script four of them around
its own clock (previous start, start, next, after-next); Redis time picks the
window among them (lua/calendar.lua), so a service host whose clock is a few
seconds off Redis's never charges the wrong window.

TOLLGATE_CLOCK_OFFSET (seconds, default 0) is added to this clock and, by the
script, to Redis time: a test or a drill can run the service just before a
boundary without waiting for it.
"""

from __future__ import annotations

import functools
import math
import time
import zoneinfo
from datetime import date, datetime, timedelta
from typing import Callable

from ratelimit_service.redis_client import bulk

OFFSET_ENV = "TOLLGATE_CLOCK_OFFSET"
# Large enough for any drill (about 31 years either way), small enough that
# every boundary stays within the years datetime can name.
MAX_OFFSET = 1e9

Bounds = tuple[int, int, int, int]


class BadTimezone(ValueError):
    pass


@functools.lru_cache(maxsize=None)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone `name`; raises BadTimezone naming it."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise BadTimezone(f"unknown timezone '{name}'") from None


def clock_offset(text: str | None) -> float:
    """TOLLGATE_CLOCK_OFFSET's value in seconds; raises ValueError naming the problem."""
    if not text:
        return 0.0
    try:
        offset = float(text)
    except ValueError:
        raise ValueError(f"{OFFSET_ENV}: expected seconds, got {text!r}") from None
    if not math.isfinite(offset) or abs(offset) > MAX_OFFSET:
        raise ValueError(f"{OFFSET_ENV}: {text} is out of range [-{MAX_OFFSET:.0f}, {MAX_OFFSET:.0f}]")
    return offset


def _first_day(unit: str, day: date) -> date:
    """The first day of the window holding `day`."""
    if unit == "DAY":
        return day
    if unit == "WEEK":
        return day - timedelta(days=day.weekday())  # Monday
    if unit == "MONTH":
        return day.replace(day=1)
    return day.replace(month=1, day=1)


def _step(unit: str, first: date, n: int) -> date:
    """The first day of the window `n` windows after the one starting on `first`."""
    if unit == "DAY":
        return first + timedelta(days=n)
    if unit == "WEEK":
        return first + timedelta(weeks=n)
    if unit == "MONTH":
        months = first.year * 12 + first.month - 1 + n
        return date(months // 12, months % 12 + 1, 1)
    return date(first.year + n, 1, 1)


def _midnight(day: date, tz: zoneinfo.ZoneInfo) -> int:
    """The first instant of `day` in `tz`. Where midnight does not exist (a zone
    that springs forward at 00:00), fold=0 gives the instant of the change,
    which is when the day begins."""
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())


def boundaries(unit: str, tz: zoneinfo.ZoneInfo, now: float) -> Bounds:
    """(previous start, start, next, after-next) of the window holding `now`, in unix seconds."""
    first = _first_day(unit, datetime.fromtimestamp(now, tz).date())
    # Zones whose clocks go back across midnight can name a date whose start is
    # still ahead, or already past its end: settle on the window that holds now.
    while _midnight(first, tz) > now:
        first = _step(unit, first, -1)
    while _midnight(_step(unit, first, 1), tz) <= now:
        first = _step(unit, first, 1)
    return tuple(_midnight(_step(unit, first, n), tz) for n in (-1, 0, 1, 2))  # type: ignore[return-value]


class Windows:
    """Boundaries per (unit, timezone), as the script call carries them, kept
    until the service's clock leaves the window they were computed for."""

    def __init__(self, offset: float = 0.0, clock: Callable[[], float] = time.time):
        self.offset = offset
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[int, int, bytes]] = {}

    def now(self) -> float:
        return self._clock() + self.offset

    def bounds(self, unit: str, timezone: str) -> bytes:
        """The script's period field for a calendar limit: its four boundaries, encoded."""
        now = self.now()
        cached = self._cache.get((unit, timezone))
        if cached is not None and cached[0] <= now < cached[1]:
            return cached[2]
        b = boundaries(unit, zone(timezone), now)
        encoded = bulk(" ".join(map(str, b)))
        self._cache[(unit, timezone)] = (b[1], b[2], encoded)
        return encoded
