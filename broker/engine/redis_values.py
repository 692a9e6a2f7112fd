"""How the Redis store writes things down, and names itself: the published token's
document and its placing on a reader's clock, the server facts ``broker check`` reports,
and the store's URL without its credentials. Pure: no I/O (:mod:`broker.engine.redis_store`
does that)."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from broker.core.clock import Clock
from broker.core.tokens import Token

SCHEMES = ("redis", "rediss")
"""``redis://`` (plain TCP) and ``rediss://`` (TLS)."""

TOKEN = "token"  # noqa: S105 (a field name, not a secret)
"""The field the published token's document keeps it under."""


@dataclass(frozen=True)
class ServerFacts:
    """What ``broker check`` reports about the Redis server."""

    where: str
    """``Redis at host:port/db``: no credentials."""
    version: str
    aof: bool
    """Whether the append-only file is on."""
    save_points: str | None
    """The RDB save points (``3600 1 300 100``), ``""`` for none; None when the server
    does not let this user read its configuration (managed Redis often refuses CONFIG)."""

    @property
    def persists(self) -> bool | None:
        """Whether a restart keeps what was written; None when it cannot be told."""
        if self.aof or self.save_points:
            return True
        return None if self.save_points is None else False


def token_document(token: Token) -> str:
    """The published token as JSON: its wall-clock expiry and lifetime cross processes (each
    reader places them on its own monotonic clock), and its ETag names it alike everywhere."""
    return json.dumps(
        {
            "access_token": token.access_token,
            "expires_at_wall": token.expires_at_wall,
            "lifetime": token.lifetime,
            "etag": token.etag,
            "serve_min_remaining": token.serve_min_remaining,
        }
    )


def placed(document: Any, clock: Clock) -> Token:
    """A published token's document on *clock*'s monotonic time; raises ValueError,
    TypeError or KeyError for a document that is not one."""
    expires_at_wall = _number(document["expires_at_wall"])
    lifetime = _number(document["lifetime"])
    access_token, etag = document["access_token"], document["etag"]
    if not isinstance(access_token, str) or not access_token or not isinstance(etag, str):
        raise TypeError
    expires_at = clock.monotonic() + (expires_at_wall - clock.wall())
    return Token(
        access_token=access_token,
        obtained_at=expires_at - lifetime,
        expires_at=expires_at,
        expires_at_wall=expires_at_wall,
        etag=etag,
        serve_min_remaining=_number(document["serve_min_remaining"]),
    )


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError
    return float(value)


def where_of(url: str) -> str | None:
    """``Redis at host:port/db`` (``Redis over TLS at`` for rediss): the URL without its
    credentials; None for a URL that is not a Redis server's."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in SCHEMES or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    db = parts.path.strip("/") or "0"
    kind = "Redis over TLS" if parts.scheme == "rediss" else "Redis"
    return f"{kind} at {host}:{port or 6379}/{db}"


def url_secrets(url: str) -> tuple[str | None, tuple[str, ...]]:
    """The URL's password (decoded), and what an error message is scrubbed of: the URL and
    the password as written, decoded and re-encoded (longest first, so the whole URL goes
    before its parts)."""
    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
        if password:
            plain = unquote(password)
            encoded = {quote(plain), quote(plain, safe=""), quote_plus(plain)}
            spellings = {url, password, plain, *encoded}
            return plain, tuple(sorted(spellings, key=len, reverse=True))
    return None, (url,)
