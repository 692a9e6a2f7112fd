"""Token values. Pure: no clock is read here, times are passed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """What a successful token response said, before it is placed on our clock.

    *lifetime* is the number of seconds the access token lives from the moment
    the response arrived, or ``None`` when the identity provider did not say.
    """

    access_token: str = field(repr=False)
    lifetime: float | None = None
    refresh_token: str | None = field(default=None, repr=False)
    scope: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    """An access token placed on the broker's clocks (always served as a Bearer token).

    *obtained_at* and *expires_at* are monotonic seconds (every decision uses
    them); *expires_at_wall* is the same instant in Unix seconds, for display.
    """

    access_token: str = field(repr=False)
    obtained_at: float
    expires_at: float
    expires_at_wall: float
    expires_at_text: str = ""
    """expires_at_wall as RFC 3339 UTC, computed once: every answer shows it."""
    scope: str | None = None

    def remaining(self, now: float) -> float:
        """Seconds this token stays valid after *now* (negative once expired)."""
        return self.expires_at - now

    def servable(self, now: float, min_valid: float = 0.0) -> bool:
        """True if the token is still valid at *now* and for *min_valid* more seconds."""
        return self.expires_at - now > max(min_valid, 0.0)

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at


def rfc3339(timestamp: float) -> str:
    """Unix seconds as RFC 3339 UTC to the second, e.g. ``2026-11-25T03:14:07Z``."""
    moment = datetime.fromtimestamp(timestamp, UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")
