"""The broker's only source of time, so refresh logic can be tested without sleeping."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Protocol


class Clock(Protocol):
    """Monotonic time for scheduling and expiry, wall time only for display."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; used for every expiry decision."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch; used to show expiry and to read absolute expiries."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait *seconds* of this clock's time."""
        ...

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait until *event* is set or *seconds* of this clock's time have passed.

        Returns whether the event was set.
        """
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        # asyncio.timeout, not wait_for: no extra task per wait (each provider waits
        # like this between refreshes, so 10,000 providers held 20,000 extra tasks).
        try:
            async with asyncio.timeout(max(0.0, seconds)):
                await event.wait()
        except TimeoutError:
            return event.is_set()
        return True


SKEW_THRESHOLD = 2.0
"""Date headers have one-second resolution; smaller differences are noise, not skew."""


def parse_http_date(value: str) -> float | None:
    """An HTTP date (``Date``, ``Retry-After``) as Unix seconds, or None if it is not one.

    Dates without a zone (asctime, ``-0000``) are read as UTC, which HTTP dates always
    are (RFC 9110 §5.6.7).
    """
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def measure_skew(date_header: str | None, wall_now: float) -> float | None:
    """The identity provider's clock minus ours, or None when there is no usable Date.

    Differences under SKEW_THRESHOLD count as 0.
    """
    server_time = parse_http_date(date_header) if date_header else None
    if server_time is None:
        return None
    skew = server_time - wall_now
    return skew if abs(skew) >= SKEW_THRESHOLD else 0.0
