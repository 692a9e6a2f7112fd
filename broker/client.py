"""Client helpers: let an app's HTTP client take its bearer tokens from the broker.

With httpx (sync or async)::

    from broker.client import BrokerAuth

    client = httpx.Client(auth=BrokerAuth("hiro"))       # or httpx.AsyncClient(auth=...)

With requests::

    from broker.client import BrokerRequestsAuth

    session = requests.Session()
    session.auth = BrokerRequestsAuth("hiro")

The broker's URL comes from ``broker_url=``, else the ``BROKER_URL`` environment variable,
else ``http://127.0.0.1:8181``; ``unix:/run/broker/broker.sock`` (or ``unix:///run/...``)
reaches a broker's Unix socket (``listen_unix``), where it can know the app by its uid.

A token is fetched with ``GET /token/<provider>`` and reused
until ``refresh_before`` seconds before it expires (the broker refreshes well ahead of that, so
a fetch is a memory read on the broker's side). When the API answers 401 the helper asks the
broker for a new token once (``POST /token/<provider>/refresh`` with ``If-Match:`` the refused
token's ETag, so the broker answers at once with a newer token if one exists and refreshes only
if the refused one is still current), sends the request again once and returns whatever that
answer is: a second 401 reaches the caller, there is no loop.

``headers=`` are sent to the broker only (e.g. a client key for the broker), never to the API.
A broker that cannot be reached or answers with an error raises :class:`BrokerUnavailable`,
whose message carries the broker's error code and message and never a token.

``requests`` is not a dependency of the broker: this module never imports it, and
:class:`BrokerRequestsAuth` is a plain callable, which is all ``requests.auth.AuthBase`` is.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import httpx

if TYPE_CHECKING:
    import requests

__all__ = [
    "DEFAULT_BROKER_URL",
    "BrokerAuth",
    "BrokerError",
    "BrokerRequestsAuth",
    "BrokerToken",
    "BrokerUnavailable",
]

DEFAULT_BROKER_URL = "http://127.0.0.1:8181"
BROKER_URL_ENV = "BROKER_URL"


class BrokerError(Exception):
    """Base class of the errors this module raises."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached or did not hand out a token.

    Attributes:
        provider: the provider asked for.
        status: the broker's HTTP status, ``None`` when it could not be reached.
        code: the broker's stable ``error`` code (``token_unavailable``, ``unknown_provider``,
            ...), or ``broker_unreachable`` / ``invalid_response`` for problems on the way.
        detail: the broker's ``message``.
        retry_after: seconds from the broker's ``Retry-After`` header, if it sent one.
    """

    def __init__(
        self,
        provider: str,
        *,
        url: str,
        code: str,
        detail: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        where = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"broker {url} ({where}) for provider {provider!r}: {code}: {detail}")
        self.provider = provider
        self.url = url
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


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


class _TokenSource:
    """The broker calls and the token cache shared by the httpx and requests helpers."""

    def __init__(
        self,
        provider: str,
        *,
        broker_url: str | None,
        refresh_before: float,
        timeout: float,
        headers: Mapping[str, str] | None,
        clock: Callable[[], float],
        client: httpx.Client | None,
        async_client: httpx.AsyncClient | None,
    ) -> None:
        if not provider:
            raise ValueError("provider must not be empty")
        if refresh_before < 0:
            raise ValueError("refresh_before must be >= 0")
        base = broker_url or os.environ.get(BROKER_URL_ENV) or DEFAULT_BROKER_URL
        self.provider = provider
        self.broker_url = base.rstrip("/")
        self._socket = unix_socket_path(self.broker_url)
        http_base = UNIX_SOCKET_BASE if self._socket is not None else self.broker_url
        self._token_url = f"{http_base}/token/{urllib.parse.quote(provider, safe='')}"
        self._refresh_before = refresh_before
        self._timeout = timeout
        self._headers = {"Accept": "application/json", **(headers or {})}
        self._clock = clock
        self._client = client
        self._async_client = async_client
        self._cached: BrokerToken | None = None
        self._lock = threading.Lock()  # guards _cached; held across sync broker calls
        self._async_lock = anyio.Lock()  # single flight among coroutines

    # -- cache ----------------------------------------------------------------

    def _fresh(self) -> str | None:
        cached = self._cached
        if cached is not None and self._clock() < cached.fresh_until:
            return cached.access_token
        return None

    def _replaced(self, stale: str) -> str | None:
        """A fresh token other than *stale*: someone refreshed while our request was refused."""
        fresh = self._fresh()
        return fresh if fresh is not None and fresh != stale else None

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    # -- sync -----------------------------------------------------------------

    def token_sync(self) -> str:
        with self._lock:
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            return self._fetch_sync("GET", self._token_url)

    def refresh_sync(self, stale: str) -> str:
        with self._lock:
            replaced = self._replaced(stale)
            if replaced is not None:
                return replaced
            return self._fetch_sync("POST", f"{self._token_url}/refresh", self._if_match(stale))

    def _if_match(self, stale: str) -> dict[str, str]:
        """``If-Match`` naming the refused token, when the broker told us its ETag."""
        cached = self._cached
        if cached is not None and cached.access_token == stale and cached.etag:
            return {"If-Match": cached.etag}
        return {}

    def _fetch_sync(self, method: str, url: str, extra: Mapping[str, str] | None = None) -> str:
        started = self._clock()
        headers = {**self._headers, **(extra or {})}
        try:
            if self._client is not None:
                response = self._client.request(method, url, headers=headers, timeout=self._timeout)
            else:
                with _own_client(self._timeout, self._socket) as client:
                    response = client.request(method, url, headers=headers)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return self._store(response, started)

    # -- async ----------------------------------------------------------------

    async def token_async(self) -> str:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        async with self._async_lock:
            fresh = self._fresh()  # fetched by the coroutine we waited for
            if fresh is not None:
                return fresh
            return await self._fetch_async("GET", self._token_url)

    async def refresh_async(self, stale: str) -> str:
        async with self._async_lock:
            replaced = self._replaced(stale)
            if replaced is not None:
                return replaced
            url = f"{self._token_url}/refresh"
            return await self._fetch_async("POST", url, self._if_match(stale))

    async def _fetch_async(
        self, method: str, url: str, extra: Mapping[str, str] | None = None
    ) -> str:
        started = self._clock()
        headers = {**self._headers, **(extra or {})}
        try:
            if self._async_client is not None:
                response = await self._async_client.request(
                    method, url, headers=headers, timeout=self._timeout
                )
            else:
                # A client per fetch: fetches are rare (once per token lifetime) and a
                # short-lived client is bound to no event loop and leaks no connections.
                async with _own_async_client(self._timeout, self._socket) as client:
                    response = await client.request(method, url, headers=headers)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        with self._lock:
            return self._store(response, started)

    # -- answers --------------------------------------------------------------

    def _store(self, response: httpx.Response, started: float) -> str:
        """Parse the broker's answer, cache the token and return it (caller holds the lock)."""
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
            fresh_until=started + expires_in - self._refresh_before,
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

    def _unreachable(self, exc: httpx.HTTPError) -> BrokerUnavailable:
        reason = str(exc) or type(exc).__name__
        return BrokerUnavailable(
            self.provider,
            url=self.broker_url,
            code="broker_unreachable",
            detail=f"{type(exc).__name__}: {reason} (is the broker running? set {BROKER_URL_ENV})",
        )


UNIX_SOCKET_BASE = "http://localhost"
"""The URL requests to a Unix socket are made to: ``localhost`` is a Host the broker takes."""


def unix_socket_path(broker_url: str) -> str | None:
    """The socket path of a ``unix:`` broker URL; None for an ``http(s)://`` one."""
    if not broker_url.startswith("unix:"):
        return None
    path = broker_url.removeprefix("unix:")
    if path.startswith("//"):  # unix:///run/broker/broker.sock
        path = path[2:]
    if not path.startswith("/"):
        msg = f"a unix: broker URL needs an absolute socket path: {broker_url!r}"
        raise ValueError(msg)
    return path


def _own_client(timeout: float, socket_path: str | None) -> httpx.Client:
    # trust_env=False: no proxy between an app and its (local or compose-network) broker.
    transport = httpx.HTTPTransport(uds=socket_path) if socket_path is not None else None
    return httpx.Client(
        timeout=timeout, trust_env=False, follow_redirects=False, transport=transport
    )


def _own_async_client(timeout: float, socket_path: str | None) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=socket_path) if socket_path is not None else None
    return httpx.AsyncClient(
        timeout=timeout, trust_env=False, follow_redirects=False, transport=transport
    )


def _bearer(token: str) -> str:
    return f"Bearer {token}"


class BrokerAuth(httpx.Auth):
    """``httpx.Auth`` that sets ``Authorization: Bearer <token from the broker>``.

    Works with ``httpx.Client`` and ``httpx.AsyncClient``; one instance may be shared by
    threads and coroutines. On a 401 from the API it forces one refresh at the broker and
    retries the request once (request bodies are buffered so they can be sent again).

    Args:
        provider: the broker's provider name (``/token/<provider>``).
        broker_url: the broker's base URL, or ``unix:<socket path>``; default ``$BROKER_URL``
            or ``http://127.0.0.1:8181``.
        refresh_before: fetch a new token when the cached one has less than this many
            seconds left.
        timeout: seconds for each call to the broker.
        headers: extra headers for the broker only (never sent to the API).
        clock: monotonic clock, for tests.
        client, async_client: httpx clients to call the broker with (for tests or custom
            transports; the caller owns them; with a ``unix:`` URL, their transport must
            reach the socket). By default each broker call uses a new
            short-lived client, never the app's client.
    """

    requires_request_body = True  # a refused request is sent again, so its body must be kept

    def __init__(
        self,
        provider: str,
        *,
        broker_url: str | None = None,
        refresh_before: float = 30.0,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._source = _TokenSource(
            provider,
            broker_url=broker_url,
            refresh_before=refresh_before,
            timeout=timeout,
            headers=headers,
            clock=clock,
            client=client,
            async_client=async_client,
        )

    @property
    def provider(self) -> str:
        return self._source.provider

    @property
    def broker_url(self) -> str:
        return self._source.broker_url

    def get_token(self) -> str:
        """The current token (cached, or fetched from the broker)."""
        return self._source.token_sync()

    async def aget_token(self) -> str:
        """The current token (cached, or fetched from the broker) without blocking the loop."""
        return await self._source.token_async()

    def invalidate(self) -> None:
        """Forget the cached token; the next request fetches one from the broker."""
        self._source.invalidate()

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        token = self._source.token_sync()
        request.headers["Authorization"] = _bearer(token)
        response = yield request
        if response.status_code != 401:
            return
        request.headers["Authorization"] = _bearer(self._source.refresh_sync(stale=token))
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        token = await self._source.token_async()
        request.headers["Authorization"] = _bearer(token)
        response = yield request
        if response.status_code != 401:
            return
        request.headers["Authorization"] = _bearer(await self._source.refresh_async(stale=token))
        yield request

    def __repr__(self) -> str:
        return f"BrokerAuth({self.provider!r}, broker_url={self.broker_url!r})"


_UNSEEKABLE = -1


class BrokerRequestsAuth:
    """The :class:`BrokerAuth` of ``requests``: ``session.auth = BrokerRequestsAuth("hiro")``.

    requests calls it with each prepared request; it sets the bearer token and registers a
    response hook that, on a 401, forces one refresh at the broker and sends the request once
    more on the same connection adapter. A body that cannot be rewound (a generator) is not
    sent again: the 401 is returned as is. Arguments are those of :class:`BrokerAuth`
    (``async_client`` aside); the broker is called with httpx, so requests is needed only by
    the app.
    """

    def __init__(
        self,
        provider: str,
        *,
        broker_url: str | None = None,
        refresh_before: float = 30.0,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        client: httpx.Client | None = None,
    ) -> None:
        self._source = _TokenSource(
            provider,
            broker_url=broker_url,
            refresh_before=refresh_before,
            timeout=timeout,
            headers=headers,
            clock=clock,
            client=client,
            async_client=None,
        )

    @property
    def provider(self) -> str:
        return self._source.provider

    @property
    def broker_url(self) -> str:
        return self._source.broker_url

    def get_token(self) -> str:
        """The current token (cached, or fetched from the broker)."""
        return self._source.token_sync()

    def invalidate(self) -> None:
        """Forget the cached token; the next request fetches one from the broker."""
        self._source.invalidate()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self._source.token_sync()
        request.headers["Authorization"] = _bearer(token)
        body_pos: int | None = None
        body: Any = request.body
        if body is not None and not isinstance(body, str | bytes):
            try:
                body_pos = int(body.tell())
            except (AttributeError, OSError, ValueError):
                body_pos = _UNSEEKABLE
        request.register_hook(
            "response", functools.partial(self._on_response, token=token, body_pos=body_pos)
        )
        return request

    def _on_response(
        self, response: requests.Response, *, token: str, body_pos: int | None, **send_kwargs: Any
    ) -> requests.Response:
        if response.status_code != 401 or body_pos == _UNSEEKABLE:
            return response
        new_token = self._source.refresh_sync(stale=token)
        # Free the connection before sending again (as requests' own HTTPDigestAuth does).
        _ = response.content
        response.close()
        retry = response.request.copy()
        if body_pos is not None:
            body: Any = retry.body
            body.seek(body_pos)
        retry.headers["Authorization"] = _bearer(new_token)
        # The adapter sends without running hooks, so this response is final: no loop.
        connection: Any = response.connection
        answer: requests.Response = connection.send(retry, **send_kwargs)
        answer.history.append(response)
        answer.request = retry
        return answer

    def __repr__(self) -> str:
        return f"BrokerRequestsAuth({self.provider!r}, broker_url={self.broker_url!r})"
