"""Per-provider rules that need no I/O: the caller rate limit and what a provider's state is.

Pure: times and facts are passed in, so each rule is table-tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from broker.core.errors import FailureKind

ProviderState = Literal[
    "starting",
    "ready",
    "degraded",
    "expired",
    "failing",
    "rejected",
    "misconfigured",
    "needs_login",
]
PROVIDER_STATES: tuple[ProviderState, ...] = get_args(ProviderState)
SERVING_STATES = frozenset({"ready", "degraded"})
"""States in which the provider holds a token it serves."""

Outcome = Literal["success"] | FailureKind | None
"""The last token request's outcome: None before the first one has ended."""


def provider_state(
    *, outcome: Outcome, servable: bool, needs_login: bool, sink_failing: bool = False
) -> ProviderState:
    """What is true of a provider now, from its last outcome and whether it has a token to serve.

    ``starting`` lasts only until the first outcome; afterwards the state says
    whether a token is served (``ready``, or ``degraded`` when the last attempt
    failed, or when its sink file cannot be written: the callers reading that file are
    not served) and, if not, why not.
    """
    if needs_login:
        return "needs_login"
    if outcome is None:
        return ("degraded" if sink_failing else "ready") if servable else "starting"
    if servable:
        return "ready" if outcome == "success" and not sink_failing else "degraded"
    if outcome == "success":
        return "expired"  # the token ran out and the next attempt has not ended yet
    if outcome is FailureKind.REJECTED:
        return "rejected"
    if outcome is FailureKind.MISCONFIGURED:
        return "misconfigured"
    return "failing"


@dataclass(slots=True)
class CallerBucket:
    """A token bucket for the token requests callers trigger (``min_valid``, forced refresh).

    Holds up to *burst* allowances, starts full and regains one every
    *interval* seconds. Planned refreshes never draw from it: it only stops a
    caller from turning the broker into a request loop against an identity
    provider.
    """

    burst: int
    interval: float
    _level: float = field(init=False)
    _at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._level = float(self.burst)

    def take(self, now: float) -> float:
        """Use one allowance and return 0, or return the seconds until one is available."""
        self._refill(now)
        if self._level >= 1.0:
            self._level -= 1.0
            return 0.0
        return (1.0 - self._level) * self.interval

    def available(self, now: float) -> float:
        """Allowances left at *now* (fractional while one is coming back)."""
        self._refill(now)
        return self._level

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._level = min(float(self.burst), self._level + (now - self._at) / self.interval)
        if self._at is None or now > self._at:
            self._at = now
