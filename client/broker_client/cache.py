"""The token cache and the broker's token protocol, without I/O.

One place for what the sync and the async paths share: what to ask the broker
(``GET /token/<provider>``, or ``POST /token/<provider>/refresh`` with ``If-Match:`` the
refused token's ETag), how to read its answer (a token to cache, or a
:class:`BrokerUnavailable`), and when a cached token is still good. Nothing here sends or
waits: :mod:`broker_client.source` sends the planned calls and serialises the calls here.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from broker_client.errors import BrokerUnavailable


@dataclass(frozen=True)
class BrokerToken:
    """A token as the broker served it. ``repr()`` never shows the token itself."""

    access_token: str = field(repr=False)
    expires_at: datetime
    """When the token expires (UTC), from the broker's ``expires_at``."""
    fresh_until: float
    """Monotonic-clock time after which the helpers fetch a new one."""
    etag: str | None = None
    """The broker's name for this token, sent as ``If-Match`` when an API refuses it."""


@dataclass(frozen=True)
class BrokerCall:
    """A request the cache wants sent to the broker; the transport adds where and how."""

    method: str
    path: str
    """From the broker's base URL on: ``/token/<provider>``."""
    headers: Mapping[str, str]
    started: float
    """Monotonic-clock time the call was planned: the answer's ``expires_in`` counts from it."""


class TokenCache:
    """One provider's cached token and the broker calls that renew it.

    Not thread safe by itself: :class:`broker_client.source.TokenSource` holds its locks
    around each plan, send and :meth:`store`.
    """

    def __init__(
        self,
        provider: str,
        *,
        broker_url: str,
        refresh_before: float,
        headers: Mapping[str, str] | None,
        clock: Callable[[], float],
    ) -> None:
        if not provider:
            raise ValueError("provider must not be empty")
        if refresh_before < 0:
            raise ValueError("refresh_before must be >= 0")
        self.provider = provider
        self.broker_url = broker_url
        self._path = f"/token/{urllib.parse.quote(provider, safe='')}"
        self._refresh_before = refresh_before
        self._headers = {"Accept": "application/json", **(headers or {})}
        self._clock = clock
        self._cached: BrokerToken | None = None

    def fresh(self) -> str | None:
        """The cached token while it is good (``refresh_before`` short of its expiry)."""
        cached = self._cached
        if cached is not None and self._clock() < cached.fresh_until:
            return cached.access_token
        return None

    def next_get(self) -> str | BrokerCall:
        """The cached token while it is good, else the call that fetches one."""
        fresh = self.fresh()
        return fresh if fresh is not None else self._call("GET", self._path)

    def next_refresh(self, stale: str) -> str | BrokerCall:
        """What to do about *stale*, a token an API refused.

        A good token other than *stale* is returned as is: someone refreshed while our
        request was refused. Else the refresh call, with ``If-Match`` naming *stale* when the
        broker told us its ETag, so that the broker answers at once with a newer token if one
        exists and refreshes only if *stale* is still its current one.
        """
        fresh = self.fresh()
        if fresh is not None and fresh != stale:
            return fresh
        cached = self._cached
        if cached is not None and cached.access_token == stale and cached.etag:
            return self._call("POST", f"{self._path}/refresh", {"If-Match": cached.etag})
        return self._call("POST", f"{self._path}/refresh")

    def _call(self, method: str, path: str, extra: Mapping[str, str] | None = None) -> BrokerCall:
        headers = {**self._headers, **(extra or {})}
        return BrokerCall(method, path, headers, started=self._clock())

    def invalidate(self) -> None:
        """Forget the cached token: the next :meth:`next_get` plans a fetch."""
        self._cached = None

    def store(self, call: BrokerCall, response: httpx.Response) -> str:
        """Read the broker's answer to *call* (its body loaded): cache the token and return it."""
        if response.status_code != 200:
            raise self._refused(response)
        try:
            body = response.json()
            access_token = body["access_token"]
            expires_in = float(body["expires_in"])
            expires_at = datetime.fromisoformat(body["expires_at"])
            if not isinstance(access_token, str) or not access_token:
                raise TypeError("access_token is not a non-empty string")
            etag = body.get("etag") or response.headers.get("etag")
        except (ValueError, TypeError, KeyError) as exc:
            # Describe the problem without echoing the body: it may hold a token.
            raise BrokerUnavailable(
                self.provider,
                url=self.broker_url,
                code="invalid_response",
                detail=f"not a token answer ({type(exc).__name__})",
                status=response.status_code,
            ) from None
        self._cached = BrokerToken(
            access_token=access_token,
            expires_at=expires_at,
            fresh_until=call.started + expires_in - self._refresh_before,
            etag=etag if isinstance(etag, str) else None,
        )
        return access_token

    def _refused(self, response: httpx.Response) -> BrokerUnavailable:
        code, detail = f"http_{response.status_code}", response.reason_phrase
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            code = body["error"]
            detail = str(body.get("message", detail))
        retry_after: float | None
        try:
            retry_after = float(response.headers["retry-after"])
        except (KeyError, ValueError):
            retry_after = None
        return BrokerUnavailable(
            self.provider,
            url=self.broker_url,
            code=code,
            detail=detail,
            status=response.status_code,
            retry_after=retry_after,
        )

    def unreachable(self, exc: httpx.HTTPError, *, env: str) -> BrokerUnavailable:
        """The error for a call that got no answer; *env* names the variable for the URL."""
        reason = str(exc) or type(exc).__name__
        return BrokerUnavailable(
            self.provider,
            url=self.broker_url,
            code="broker_unreachable",
            detail=f"{type(exc).__name__}: {reason} (is the broker running? set {env})",
        )
