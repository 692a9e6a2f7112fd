"""Token values. Pure: no clock is read here, times are passed in."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
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
    id_token: str | None = field(default=None, repr=False)
    """An OpenID Connect ID token, when the answer carried one (checked at a login)."""


ETAG_BYTES = 12
"""96 bits of a keyed hash: names a token without revealing anything about it."""


def token_etag(key: bytes, access_token: str) -> str:
    """The strong entity tag (RFC 9110 §8.8.3, quotes included) that names *access_token*.

    A truncated HMAC under a per-process random *key*: callers can tell two
    tokens apart and say which one an API refused, but the tag reveals nothing
    about the token and cannot be computed without the key.
    """
    digest = hmac.new(key, access_token.encode(), hashlib.sha256).digest()[:ETAG_BYTES]
    return '"' + base64.urlsafe_b64encode(digest).decode("ascii") + '"'


def matches_etag(etag: str, presented: str) -> bool:
    """True if an ``If-Match`` value (or ``?rejected=``) names *etag*.

    Accepts the tag with or without its quotes, a weak ``W/`` prefix (a client
    library may add one) and a comma-separated list; ``*`` names no particular
    token and so matches nothing here.
    """
    bare = etag.strip('"')
    for part in presented.split(","):
        candidate = part.strip().removeprefix("W/").strip('"')
        if candidate and hmac.compare_digest(candidate, bare):
            return True
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    """An access token placed on the broker's clocks (always served as a Bearer token).

    *obtained_at* and *expires_at* are monotonic seconds (every decision uses
    them); *expires_at_wall* is the same instant in Unix seconds, to the
    millisecond the answers state (:func:`place_token`), so a token is never
    served past the ``expires_at`` its answer shows.
    """

    access_token: str = field(repr=False)
    obtained_at: float
    expires_at: float
    expires_at_wall: float
    etag: str
    serve_min_remaining: float = 1.0
    """Below this many seconds left the token is not served (it counts as expired)."""
    expires_at_text: str = field(init=False, repr=False, compare=False)
    """expires_at_wall as RFC 3339 UTC, computed once: every answer shows it."""
    _json_parts: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)
    """The JSON answer around ``expires_in``: made once, served to every caller."""

    def __post_init__(self) -> None:
        text = rfc3339(self.expires_at_wall, millis=True)
        head = (
            f'{{"access_token": {json.dumps(self.access_token)}, "token_type": "Bearer",'
            ' "expires_in": '
        )
        tail = f', "expires_at": "{text}", "etag": {json.dumps(self.etag)}}}'
        object.__setattr__(self, "expires_at_text", text)
        object.__setattr__(self, "_json_parts", (head.encode(), tail.encode()))

    def json_body(self, now: float) -> bytes:
        """The ``GET /token`` JSON answer at *now* (``expires_in`` counts down)."""
        head, tail = self._json_parts
        return b"%s%d%s" % (head, self.expires_in(now), tail)

    def expires_in(self, now: float) -> int:
        """Whole seconds left, rounded down: never more than the token really has."""
        return max(math.floor(self.expires_at - now), 0)

    def remaining(self, now: float) -> float:
        """Seconds this token stays valid after *now* (negative once expired)."""
        return self.expires_at - now

    def servable(self, now: float, min_valid: float = 0.0) -> bool:
        """True if the token may be served at *now* and stays valid *min_valid* more seconds.

        Never with less than ``serve_min_remaining`` left, so an answer's
        ``expires_in`` is at least that (and at least 1).
        """
        return self.expires_at - now >= max(min_valid, self.serve_min_remaining)

    @property
    def serve_until(self) -> float:
        """The last monotonic instant this token is served (``servable`` is inclusive there);
        a sink file is removed at it, so a file never holds a token GET would refuse."""
        return self.expires_at - self.serve_min_remaining

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at


def place_token(
    access_token: str,
    *,
    sent_at: float,
    sent_at_wall: float,
    lifetime: float,
    etag_key: bytes,
    serve_min_remaining: float,
) -> Token:
    """A token that lives *lifetime* seconds from when it was asked for (*sent_at*).

    The expiry is rounded down to the millisecond the answers state, on both
    clocks, so the monotonic decisions and the advertised ``expires_at`` agree.
    """
    wall_expiry = math.floor((sent_at_wall + lifetime) * 1000) / 1000
    return Token(
        access_token=access_token,
        obtained_at=sent_at,
        expires_at=sent_at + (wall_expiry - sent_at_wall),
        expires_at_wall=wall_expiry,
        etag=token_etag(etag_key, access_token),
        serve_min_remaining=serve_min_remaining,
    )


def rfc3339(timestamp: float, *, millis: bool = False) -> str:
    """Unix seconds as RFC 3339 UTC, e.g. ``2026-11-25T03:14:07Z`` (``...07.250Z`` with *millis*).

    Rounded down: a time shown is never later than the one it stands for.
    """
    if millis:
        whole_ms = math.floor(timestamp * 1000)
        moment = datetime.fromtimestamp(whole_ms // 1000, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{whole_ms % 1000:03d}Z"
    moment = datetime.fromtimestamp(math.floor(timestamp), UTC)
    return moment.isoformat().replace("+00:00", "Z")
