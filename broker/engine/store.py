"""The storage and coordination seam: where the refresh engine keeps what outlives a request.

The engine (:mod:`broker.engine.manager`) needs four things from the place a provider's tokens
live, and nothing else:

* **load** what is known about a provider's login before its first token request: the
  newest refresh token (and, in a store shared by several brokers, the current access
  token another one published);
* **save** a rotated refresh token durably *before* the engine relies on it (the previous
  one may already be dead at the identity provider), and **forget** one that was refused;
* **publish** a new access token, for the other brokers sharing the store;
* hold a per-provider **lease** while talking to the identity provider, so that one actor
  at a time does (two presenting the same rotating refresh token would kill the login);
* in a shared store, **announce** what another broker published, so that every broker
  takes a new token as soon as it exists rather than at its own next refresh.

:class:`TokenStore` is that interface; ``tests/test_store_contract.py`` is the contract
every implementation must pass. :class:`LocalStore` is the single-broker one: refresh
tokens in the state directory (:class:`broker.engine.state.StateStore`), or nowhere but the
engine's memory, the current token in the engine's memory, and an in-process lock as the
lease. The store shared by replicas is :class:`broker.engine.redis_store.RedisStore`.

Under a shared store the engine loads before every token request, inside the lease (another
broker may have rotated the refresh token since), and takes a token another broker
published instead of asking the identity provider when it is newer than its own; and one
listener loads whatever :meth:`TokenStore.announcements` names, installing it by the same
rule, so that every broker serves the newest token without waiting for its own refresh.
Under a store of its own it loads once, before the first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from broker.core.errors import BrokerError
from broker.core.tokens import Token
from broker.engine.state import StateStore
from broker.engine.state_file import StateError

EVERY_PROVIDER = "*"
"""Announced when anything may have changed unseen (a subscription (re)made: what was
announced meanwhile is lost): read every provider again. Not a provider name."""


class StoreError(BrokerError):
    """A store could not do what was asked; the message names the place, never a secret."""


class StoreConflict(StoreError):
    """A fenced save found another refresh token than the one it was to replace: another
    broker saved one meanwhile (it took the lease after this broker's had expired)."""


@dataclass(frozen=True)
class Replacing:
    """The fence of a save: what the store held when it was read inside the lease (None:
    nothing). A shared store saves only if it still holds that, so that a broker whose
    lease expired under it cannot overwrite what the next holder saved."""

    refresh_token: str | None = field(repr=False)


@dataclass
class StoreStatus:
    """What ``/providers`` and ``/readyz`` show of the store (no secret: never its URL)."""

    backend: str
    """``redis``, ``state_dir`` (a local state directory) or ``memory``."""
    where: str | None = None
    """Which server, as ``Redis at <host>:<port>/<db>``; None for a local store."""
    connected: bool | None = None
    """Whether the last command to a shared store succeeded (None: none was sent yet)."""
    last_error: str | None = None
    last_error_wall: float | None = None
    last_announcement_wall: float | None = None
    """When another broker's announcement last arrived (wall clock)."""
    leases: set[str] = field(default_factory=set)
    """The providers whose lease this broker holds now."""


@dataclass(frozen=True)
class Stored:
    """What a store knows about one provider's login."""

    refresh_token: str | None = field(default=None, repr=False)
    """The newest refresh token saved for the login, if any."""
    token: Token | None = None
    """A current access token another broker published (shared stores only)."""
    fence: Replacing | None = None
    """What the next save must find in the store, when that is not :attr:`refresh_token`
    (a refresh token offered from a replica's own copy, which Redis does not hold)."""

    @property
    def holds(self) -> str | None:
        """The refresh token the store itself holds: what a fenced save must find."""
        return self.fence.refresh_token if self.fence is not None else self.refresh_token


class TokenStore(Protocol):
    """What the refresh engine needs from the place tokens live (see the module text)."""

    @property
    def shared(self) -> bool:
        """Whether other brokers read what this one publishes (then :meth:`load` returns
        their tokens too); False for a store only this process uses."""
        ...

    @property
    def durable(self) -> bool:
        """Whether a saved refresh token survives a restart (False: it is not kept)."""
        ...

    async def load(self, provider: str, login: str) -> Stored:
        """What is saved for *provider* under *login* (see
        :func:`broker.engine.fingerprint.login_fingerprint`); an empty :class:`Stored` when
        nothing is, or it belongs to another login. A shared store raises StoreError when
        it cannot be read: the engine then sends no request, since the refresh token it
        holds may be one another broker has already rotated."""
        ...

    async def save_refresh_token(
        self, provider: str, login: str, refresh_token: str, *, replacing: Replacing | None = None
    ) -> None:
        """Keep *refresh_token* durably; when this returns it survives a crash. Raises
        StoreError (the engine then serves from memory and says so). A shared store given
        *replacing* saves only if it still holds that refresh token, and raises
        StoreConflict when it does not; a store of one broker needs no fence."""
        ...

    async def forget(self, provider: str) -> None:
        """Drop *provider*'s refresh token (the identity provider refused it). Raises
        StoreError."""
        ...

    async def publish(self, provider: str, login: str, token: Token) -> None:
        """Make *token* the current one for the other brokers sharing this store. Never
        raises: a token that could not be published is still this broker's to serve."""
        ...

    def lease(self, provider: str) -> AbstractAsyncContextManager[None]:
        """Held while one actor talks to the identity provider for *provider*: no two
        holders at once. Entering it raises StoreError when the lease cannot be taken."""
        ...

    def status(self) -> StoreStatus:
        """Where the store stands now, for the status endpoints."""
        ...

    def announcements(self) -> AsyncGenerator[str, None]:
        """The names of the providers another broker published a token for, as they come,
        and :data:`EVERY_PROVIDER` whenever announcements may have been missed (first
        when the subscription is made, then after every reconnection). An announcement
        carries no token: the listener loads it. Raises StoreError when the store can no
        longer be listened to (the listener starts again, after a pause); ends at once
        for a store no other broker writes."""
        ...


class LocalStore:
    """One broker's store: a state directory (or memory only) and an in-process lease."""

    shared = False

    def __init__(self, state: StateStore | None = None) -> None:
        self.state = state
        """The state directory, or None: refresh tokens then live in the engine's memory
        only, and a restart (or a provider's changed settings) needs a new login."""
        self._leases: dict[str, asyncio.Lock] = {}

    @property
    def durable(self) -> bool:
        return self.state is not None

    async def load(self, provider: str, login: str) -> Stored:
        if self.state is None:
            return Stored()
        # In a thread: a read and maybe a decryption; never raises (a bad file is moved
        # aside and logged by the state store).
        persisted = await asyncio.to_thread(self.state.load, provider, login)
        return Stored(persisted.refresh_token if persisted is not None else None)

    async def save_refresh_token(
        self, provider: str, login: str, refresh_token: str, *, replacing: Replacing | None = None
    ) -> None:
        # No fence: only this broker writes here, under its own lease.
        if self.state is None:
            return
        try:
            # In a thread: fsync can take milliseconds. If the caller is cancelled
            # meanwhile, the thread still finishes the write.
            await asyncio.to_thread(self.state.save, provider, login, refresh_token)
        except StateError as exc:
            raise StoreError(str(exc)) from None

    async def forget(self, provider: str) -> None:
        if self.state is None:
            return
        try:
            await asyncio.to_thread(self.state.delete, provider)
        except StateError as exc:
            raise StoreError(str(exc)) from None

    async def publish(self, provider: str, login: str, token: Token) -> None:
        """Nothing to do: no other broker reads this store, and the engine keeps the
        current token in its own memory."""

    def lease(self, provider: str) -> AbstractAsyncContextManager[None]:
        return self._hold(self._leases.setdefault(provider, asyncio.Lock()))

    def status(self) -> StoreStatus:
        return StoreStatus(backend="memory" if self.state is None else "state_dir")

    async def announcements(self) -> AsyncGenerator[str, None]:
        """Nothing, at once: no other broker writes this store. (The engine does not even
        listen to a store that is not shared.)"""
        nothing: tuple[str, ...] = ()  # an async generator that yields nothing
        for name in nothing:
            yield name

    @asynccontextmanager
    async def _hold(self, lock: asyncio.Lock) -> AsyncIterator[None]:
        async with lock:
            yield
