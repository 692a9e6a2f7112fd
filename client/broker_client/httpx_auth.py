""":class:`BrokerAuth`: the ``httpx.Auth`` that takes its bearer tokens from the broker."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping

import httpx

from broker_client.helper import TokenHelper, bearer
from broker_client.source import TokenSource


class BrokerAuth(TokenHelper, httpx.Auth):
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
        headers: extra headers for the broker only (never sent to the API). Without an
            ``Authorization`` among them, the client key in ``$BROKER_KEY``, else in the file
            ``$BROKER_KEY_FILE`` names, is sent as ``Authorization: Bearer <key>``.
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
        self._source = TokenSource(
            provider,
            broker_url=broker_url,
            refresh_before=refresh_before,
            timeout=timeout,
            headers=headers,
            clock=clock,
            client=client,
            async_client=async_client,
        )

    async def aget_token(self) -> str:
        """The current token (cached, or fetched from the broker) without blocking the loop."""
        return await self._source.token_async()

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        token = self._source.token_sync()
        request.headers["Authorization"] = bearer(token)
        response = yield request
        if response.status_code != 401:
            return
        request.headers["Authorization"] = bearer(self._source.refresh_sync(stale=token))
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        token = await self._source.token_async()
        request.headers["Authorization"] = bearer(token)
        response = yield request
        if response.status_code != 401:
            return
        request.headers["Authorization"] = bearer(await self._source.refresh_async(stale=token))
        yield request
