"""Spacing for planned token requests, so that a crowd of them never stalls the event loop.

Each token request costs about 1 ms of CPU on the event loop (httpx,
httpcore, h11 and the broker's bookkeeping, spread over some twenty
callbacks: ``bench/README.md``, refresh noise). When many providers are due
at the same moment (the same lifetimes, a start-up, jitter turned off), their
callbacks pile up in the same loop iterations, and a ``GET /token`` that
arrives then waits behind all of them. Starting planned requests a couple of
milliseconds apart keeps at most one of them on the loop at a time, at a
rate (500 a second) well above what 10,000 providers with 60-second tokens
need (250 a second). Callers' own fetches (a cold provider, ``min_valid``, a
forced refresh) do not queue here.
"""

from __future__ import annotations

from typing import Final

from broker.clock import Clock

PLANNED_SPACING: Final = 0.002
"""Seconds between the starts of two planned token requests."""


class Pacer:
    """Lets one waiter through per *spacing* seconds, in the order they arrived."""

    def __init__(self, clock: Clock, spacing: float = PLANNED_SPACING) -> None:
        self._clock = clock
        self._spacing = spacing
        self._next_slot = float("-inf")

    async def wait(self) -> None:
        """Return at this waiter's slot: at once, or *spacing* after the previous one."""
        now = self._clock.monotonic()
        slot = max(now, self._next_slot)
        # Reserved before sleeping: the waiters that come while this one sleeps line up
        # behind it. A waiter cancelled while it sleeps leaves its slot unused.
        self._next_slot = slot + self._spacing
        if slot > now:
            await self._clock.sleep(slot - now)
