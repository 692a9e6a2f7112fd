"""The token cache with its locks and its I/O: the one token source of a helper.

:class:`TokenSource` only sends what :class:`~broker_client.cache.TokenCache` plans and
hands it the answer, once synchronously (under a threading lock) and once with ``await``
(under an anyio lock): the two paths differ in how they wait, never in what they do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import anyio
import httpx

from broker_client.cache import BrokerCall, TokenCache
from broker_client.transport import (
    BROKER_URL_ENV,
    BrokerTransport,
    resolve_broker_url,
    with_client_key,
)


class TokenSource(TokenCache):
    """A :class:`TokenCache` that fetches from the broker, for threads and coroutines alike.

    One fetch at a time: threads wait on a lock held across the broker call, coroutines on
    an anyio lock (a thread lock held across an ``await`` would block the event loop), so
    callers who find the cache cold or a token refused share one broker call.
    """

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
        url = resolve_broker_url(broker_url)
        super().__init__(
            provider,
            broker_url=url,
            refresh_before=refresh_before,
            headers=with_client_key(headers),
            clock=clock,
        )
        self._transport = BrokerTransport(
            url, timeout=timeout, client=client, async_client=async_client
        )
        self._lock = threading.Lock()  # guards the cache; held across sync broker calls
        self._async_lock = anyio.Lock()  # single flight among coroutines

    def invalidate(self) -> None:
        with self._lock:
            super().invalidate()

    # -- sync -----------------------------------------------------------------

    def token_sync(self) -> str:
        with self._lock:
            return self._settle_sync(self.next_get())

    def refresh_sync(self, stale: str) -> str:
        with self._lock:
            return self._settle_sync(self.next_refresh(stale))

    def _settle_sync(self, step: str | BrokerCall) -> str:
        if isinstance(step, str):
            return step
        try:
            response = self._transport.send_sync(step)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc, env=BROKER_URL_ENV) from None
        return self.store(step, response)

    # -- async ----------------------------------------------------------------

    async def token_async(self) -> str:
        fresh = self.fresh()  # the common case, without waiting for coroutines that fetch
        if fresh is not None:
            return fresh
        async with self._async_lock:
            # Fetched meanwhile by the coroutine we waited for, or still to fetch.
            return await self._settle_async(self.next_get())

    async def refresh_async(self, stale: str) -> str:
        async with self._async_lock:
            return await self._settle_async(self.next_refresh(stale))

    async def _settle_async(self, step: str | BrokerCall) -> str:
        if isinstance(step, str):
            return step
        try:
            response = await self._transport.send_async(step)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc, env=BROKER_URL_ENV) from None
        with self._lock:  # threads may use the cache too; taken only once the answer is in
            return self.store(step, response)
