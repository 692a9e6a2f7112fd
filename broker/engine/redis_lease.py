"""One provider's lease in Redis: taken, renewed while held, released by its owner only.

redis-py's :class:`~redis.asyncio.lock.Lock` does the Redis side: the value is a random
owner token, set with an expiry (``lease_ttl``) only if the key is free (``SET NX PX``),
renewed and released by compare-and-set and compare-and-delete Lua scripts, so a broker
never renews or releases a lease another one took after its own expired.

What this adds: the wait for a lease another broker holds, which also tells a release from
a takeover (see :meth:`RedisLease.acquire`), and the renewal every ``lease_ttl / 3`` while
it is held. Errors are redis-py's (:class:`~redis.exceptions.RedisError`, :class:`OSError`):
:mod:`broker.engine.redis_store` names the store in them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockNotOwnedError, RedisError

log = logging.getLogger("broker.store")

LEASE_POLL = 0.05
"""Seconds between two tries for a lease another broker holds: a wait costs at most this
much beyond the holder's release, and a waiting broker sends Redis 40 commands a second."""

RENEWALS_PER_TTL = 3
"""A held lease is renewed this many times per ``lease_ttl``."""

STALE_SHARE = 0.5
"""A held lease whose remaining life falls below this share of ``lease_ttl`` has missed a
renewal (a live holder keeps it above ``1 - 1/RENEWALS_PER_TTL``): its holder has died or
lost Redis, and whoever takes the lease next takes over from it."""

HOLDER = f"{socket.gethostname()}:{os.getpid()}"
"""This process, as a lease's value names it (a pod's name in Kubernetes)."""


class RedisLease:
    """One holding of a provider's lease (make a new one for each)."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        provider: str,
        *,
        ttl: float,
        on_lost: Callable[[], None],
        on_renew_error: Callable[[BaseException], None],
    ) -> None:
        self._redis = redis
        self._key = key
        self._provider = provider
        self._ttl = ttl
        self._on_lost = on_lost
        self._on_renew_error = on_renew_error
        self._lock = Lock(
            redis,
            key,
            timeout=ttl,
            # One Lock per holding, on the event loop: no thread-local token (two tasks
            # share a thread, and each must see its own).
            thread_local=False,
        )
        self._renewal: asyncio.Task[None] | None = None

    async def acquire(self) -> str:
        """Wait until the lease is ours; then renew it in the background until
        :meth:`release`. Returns how it was had: ``free`` (at once), ``waited`` (another
        broker held and released it) or ``takeover`` (another broker's expired: it had
        missed a renewal while we waited)."""
        # Who holds it, for whoever looks at the key (redis-cli GET): host and process, then
        # the random part that makes it this holding's.
        token = f"{HOLDER}:{secrets.token_hex(16)}"
        how = "free"
        while not await self._lock.acquire(blocking=False, token=token):
            # A live holder keeps its lease's remaining life above 2/3 of the ttl; one that
            # falls below half has missed a renewal. (-2: gone meanwhile; -1: no expiry.)
            remaining_ms = await self._redis.pttl(self._key)
            if how != "takeover":
                stale = 0 <= remaining_ms < self._ttl * 1000 * STALE_SHARE
                how = "takeover" if stale else "waited"
            await asyncio.sleep(LEASE_POLL)
        self._renewal = asyncio.create_task(self._renew(), name=f"lease:{self._provider}")
        return how

    async def release(self) -> bool:
        """Stop renewing and give the lease back. Returns False when it had already expired
        (another broker may hold it now: nothing of theirs is touched). Raises redis-py's
        errors (then it expires by itself within ``lease_ttl``)."""
        if self._renewal is not None:
            self._renewal.cancel()
            # wait, not await: the renewal's own CancelledError is not this task's.
            await asyncio.wait({self._renewal})
        try:
            await self._lock.release()
        except LockNotOwnedError:
            return False
        return True

    async def _renew(self) -> None:
        """Reset the lease's expiry to lease_ttl every third of it, until cancelled."""
        while True:
            # Real time, not the broker's clock: Redis expires the lease on its own clock.
            await asyncio.sleep(self._ttl / RENEWALS_PER_TTL)
            try:
                await self._lock.reacquire()
            except LockNotOwnedError:
                log.error(
                    "%s: the lease expired before it could be renewed; another broker may"
                    " be talking to the identity provider at the same time",
                    self._provider,
                )
                self._on_lost()
                return
            except (RedisError, OSError) as exc:
                self._on_renew_error(exc)
