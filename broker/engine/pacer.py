"""Start times for planned token requests, spaced so that a crowd never stalls the event loop.

Each token request costs about 1 ms of CPU on the event loop (httpx,
httpcore, h11 and the broker's bookkeeping, in a few steps of 0.1 to 0.3 ms;
``bench/README.md``, refresh noise). When many providers are due at the same
moment (equal lifetimes, a start-up, jitter turned off), their steps pile up
in the same loop iterations and a ``GET /token`` that arrives then waits
behind all of them.

So every planned request books its start time in a :class:`StartCalendar`
of 2 ms slots when it is planned: the first free slot at or after the time
it wants. A crowd of 1,000 is spread over 2 s; a provider alone is not moved
at all. The booked time is the plan (``next_refresh_in`` in ``/providers``),
so start-up crowds do not come back as a crowd in the first refresh round,
and the loop never sees more than one planned start per slot (500 a second,
twice what 10,000 providers with 60-second tokens need). A request that
would be moved further than the caller allows (``max_shift``) starts at the
time it wanted instead. Callers' own fetches (a cold provider,
``min_valid``, a forced refresh) do not book.
"""

from __future__ import annotations

import math
from typing import Final

SLOT: Final = 0.002
"""Seconds between two planned starts."""

PRUNE_AT: Final = 4096
"""Bookings remembered before the past ones are forgotten (nobody books the past again)."""


class StartCalendar:
    """Books start times at least *slot* seconds apart, first come first served."""

    def __init__(self, slot: float = SLOT) -> None:
        self._slot = slot
        self._next_free: dict[int, int] = {}
        """Booked slot index -> a later index to look at next (union-find with path
        compression, so a crowd of n books in O(n), not O(n²))."""
        self._prune_at = PRUNE_AT

    def book(self, now: float, wanted: float, max_shift: float = math.inf) -> float:
        """The start time for a request that wants to start at *wanted* (monotonic s).

        The first free slot at or after *wanted*, booked; or *wanted* itself,
        unbooked, when that slot is more than *max_shift* seconds later.
        """
        if self._slot <= 0:
            return wanted
        index = self._find_free(math.ceil(max(wanted, now) / self._slot - 1e-9))
        start = index * self._slot
        if start - wanted > max_shift:
            return wanted
        self._next_free[index] = index + 1
        if len(self._next_free) > self._prune_at:
            self._forget_before(math.floor(now / self._slot))
        return start

    def _find_free(self, index: int) -> int:
        path = []
        while index in self._next_free:
            path.append(index)
            index = self._next_free[index]
        for booked in path:  # path compression: the next search jumps straight here
            self._next_free[booked] = index
        return index

    def _forget_before(self, index: int) -> None:
        # Links only point forward, so no booking at or after *index* leads back here.
        self._next_free = {k: v for k, v in self._next_free.items() if k >= index}
        self._prune_at = max(PRUNE_AT, 2 * len(self._next_free))  # amortised O(1)
