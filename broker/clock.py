"""The broker's only source of time, so refresh logic can be tested without sleeping."""

from __future__ import annotations

import asyncio
import time
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


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
