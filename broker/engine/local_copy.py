"""A shared store with this replica's own copy of the refresh token in its state directory.

With ``store.backend: redis`` and a ``state_dir``, every refresh token this broker saves to
Redis, or reads from it, is also written to its state directory (crash-safely, as a single
broker's is). The copy is used once, when Redis answers but holds no refresh token for the
login: a Redis restarted empty, and every replica restarted with it, would otherwise need a
new login (impossible for a provider seeded with a refresh token alone).

It is never used while Redis cannot be read: another replica may have rotated the token
since, and presenting the older copy could trip the identity provider's reuse detection.
Everything but the refresh token (the published token, the lease, the announcements, the
status) is the shared store's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager

from broker.core.tokens import Token
from broker.engine.state import StateStore
from broker.engine.state_file import StateError
from broker.engine.store import Replacing, Stored, StoreStatus, TokenStore

log = logging.getLogger("broker.store")


class LocalCopy:
    """*shared* (a store several brokers use) with this broker's copy in *state*."""

    shared = True
    durable = True

    def __init__(self, shared: TokenStore, state: StateStore) -> None:
        self._shared = shared
        self.state = state
        self._copied: dict[str, str] = {}
        """What the copy holds per provider, once written or read: a load that returns the
        same refresh token again writes nothing."""

    async def load(self, provider: str, login: str) -> Stored:
        stored = await self._shared.load(provider, login)  # raises: no copy without Redis
        if stored.refresh_token is not None:
            if self._copied.get(provider) != stored.refresh_token:
                await self._copy(provider, login, stored.refresh_token)
            return stored
        copy = await asyncio.to_thread(self.state.load, provider, login)
        if copy is None or copy.refresh_token is None:
            return stored
        self._copied[provider] = copy.refresh_token
        log.info(
            "%s: the shared store holds no refresh token; offering this replica's copy",
            provider,
        )
        # The fence stays what Redis holds (nothing): the save after it repopulates Redis.
        return Stored(copy.refresh_token, stored.token, fence=Replacing(None))

    async def save_refresh_token(
        self, provider: str, login: str, refresh_token: str, *, replacing: Replacing | None = None
    ) -> None:
        # The copy first: if Redis cannot take it, a crash of this replica loses nothing.
        await self._copy(provider, login, refresh_token)
        await self._shared.save_refresh_token(provider, login, refresh_token, replacing=replacing)

    async def forget(self, provider: str) -> None:
        self._copied.pop(provider, None)
        try:
            await asyncio.to_thread(self.state.delete, provider)
        except StateError as exc:
            log.error("%s: cannot remove this replica's copy: %s", provider, exc)
        await self._shared.forget(provider)

    async def publish(self, provider: str, login: str, token: Token) -> None:
        await self._shared.publish(provider, login, token)

    def lease(self, provider: str) -> AbstractAsyncContextManager[None]:
        return self._shared.lease(provider)

    def announcements(self) -> AsyncGenerator[str, None]:
        return self._shared.announcements()

    def status(self) -> StoreStatus:
        return self._shared.status()

    async def _copy(self, provider: str, login: str, refresh_token: str) -> None:
        """Write the copy; a failure is logged, never raised: Redis holds the real one."""
        try:
            await asyncio.to_thread(self.state.save, provider, login, refresh_token)
        except StateError as exc:
            log.error(
                "%s: cannot write this replica's copy of the refresh token: %s", provider, exc
            )
            return
        self._copied[provider] = refresh_token
