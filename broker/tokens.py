"""Token values. Pure: no clock is read here, times are passed in."""

from __future__ import annotations

import json
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
    _json_parts: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)
    """The JSON answer around ``expires_in``: made once, served to every caller."""

    def __post_init__(self) -> None:
        head = (
            f'{{"access_token": {json.dumps(self.access_token)}, "token_type": "Bearer",'
            ' "expires_in": '
        )
        tail = f', "expires_at": "{self.expires_at_text}"}}'
        object.__setattr__(self, "_json_parts", (head.encode(), tail.encode()))

    def json_body(self, now: float) -> bytes:
        """The ``GET /token`` JSON answer at *now* (``expires_in`` counts down)."""
        head, tail = self._json_parts
        return b"%s%d%s" % (head, max(int(self.remaining(now)), 0), tail)

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
