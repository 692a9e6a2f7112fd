"""The store several brokers share: :class:`broker.engine.store.TokenStore` on one Redis.

Its one job: let replicas of the broker that hold the same login act as one, through a
Redis server (redis-py's asyncio client). Each provider has three keys under the
configured prefix (``broker:`` by default):

* ``<prefix><provider>:refresh``: the newest refresh token, as a state file keeps it
  (:meth:`broker.engine.state_file.StateCodec.seal`): bound to the provider and the login
  fingerprint, sealed with ``state_key`` when one is set. No expiry.
* ``<prefix><provider>:token``: the current access token, as the broker that obtained it
  published it, in the same kind of document. Redis drops it when it expires.
* ``<prefix>announce``: not a key, a pub/sub channel. After publishing a token a broker
  sends ``<provider> <ETag>`` on it: no token, not even sealed, crosses it (a subscriber
  reads the token from its key, sealed as above). The ETag lets a broker skip its own.
* ``<prefix><provider>:lease``: held while one broker talks to the identity provider
  (:mod:`broker.engine.redis_lease`: redis-py's Lock, renewed every ``lease_ttl / 3``): a
  holder that works longer than ``lease_ttl`` keeps it, and a dead holder's lease is free
  ``lease_ttl`` after its last renewal.

A lease can still expire under a holder that lost Redis for longer than ``lease_ttl``.
The refresh token it then obtained is saved only if the key still holds what the holder
read inside its lease (an optimistic transaction, ``WATCH``/``MULTI``): a newer one, saved
by the broker that took over, is never overwritten by an older branch of the login.

A token crosses processes by its wall-clock expiry and its lifetime, and is placed on the
reader's monotonic clock when it is loaded; its ETag travels with it, so every replica
names the same token alike.

The URL (it may hold a password) is never logged, shown in a repr or put in an error
message: those name the store as ``Redis at <host>:<port>/<db>``, and a message from
redis-py is scrubbed of the password before it is passed on.

Replicas coordinate refreshes through the lease, read each other's tokens before
refreshing, and take a token another one published as soon as it is announced (issue 14).
A Redis user restricted by ACL needs the channel too (``&<prefix>*``), not only the keys.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, ResponseError, WatchError

from broker.core.clock import Clock
from broker.core.names import PROVIDER_NAME
from broker.core.tokens import Token
from broker.engine.redis_channel import listen
from broker.engine.redis_health import RedisHealth
from broker.engine.redis_lease import RedisLease
from broker.engine.redis_values import (
    TOKEN,
    ServerFacts,
    placed,
    token_document,
    url_secrets,
    where_of,
)
from broker.engine.state_file import REFRESH_TOKEN, StateCodec, StateError
from broker.engine.store import (
    Replacing,
    StoreConflict,
    Stored,
    StoreError,
    StoreStatus,
)
from broker.ops.store_metrics import StoreMetrics

log = logging.getLogger("broker.store")

CHANNEL = "announce"
"""The pub/sub channel under the prefix that new tokens are announced on."""


class RedisStore:
    """The shared store (see the module text); one per broker process, on its event loop."""

    shared = True
    durable = True
    """As durable as the Redis server makes a write (its AOF or RDB settings)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        key_prefix: str = "broker:",
        lease_ttl: float = 10.0,
        key: bytes | None = None,
        metrics: StoreMetrics | None = None,
    ) -> None:
        """*url* is ``redis://`` or ``rediss://``, with a password if the server wants one;
        *clock* places the tokens other brokers published; *key* (a Fernet key, the
        config's ``state_key``) seals what is written; *metrics* (the broker's, enabled
        here) count leases, announcements and errors. Raises StoreError (a URL that cannot
        be used, a key that is not a Fernet key). Connects at the first command."""
        self._password, self._secrets = url_secrets(url)
        where = where_of(url)
        if where is None:
            msg = (
                "the Redis store's URL is not redis://[user:password@]host[:port][/db] or"
                " rediss://... (not shown: it may hold a password)"
            )
            raise StoreError(msg)
        self._where = where
        self._health = RedisHealth(where, secrets=self._secrets, clock=clock, metrics=metrics)
        self._prefix = key_prefix
        self._lease_ttl = lease_ttl
        self._clock = clock
        self._announced: dict[str, str] = {}
        """The ETag of the token this store last announced per provider: its own
        announcement comes back to it, and need not be loaded."""
        try:
            self._codec = StateCodec(key)
        except StateError as exc:
            raise StoreError(f"{self._where}: {exc}") from None
        # A command that hangs gives up within a third of the lease's life: a renewal
        # stuck on a dead connection leaves time for another try before the lease expires.
        timeout = max(lease_ttl / 3, 0.5)
        try:
            self._redis = Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # A blip is retried at once; an outage surfaces within a second as a
                # StoreError, and the engine backs off by itself.
                retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), 2),
                client_name="broker",
            )
        except (ValueError, TypeError):
            # redis-py's message may quote the URL: say what is wrong without it.
            msg = f"{self._where}: the URL cannot be used (a query option redis-py refuses?)"
            raise StoreError(msg) from None

    def __repr__(self) -> str:
        return f"RedisStore({self._where}, key_prefix={self._prefix!r})"

    def secret_values(self) -> list[str]:
        """The URL's password, for the log filter (which redacts its encoded spellings and
        pieces by itself); none under 8 characters, as the manager does. Not the whole URL:
        every piece of it would be redacted, ``127.0.0.1:6`` in any address included."""
        return [self._password] if self._password is not None and len(self._password) >= 8 else []

    async def server_facts(self) -> ServerFacts:
        """Connect and read the server's version and persistence settings. Raises
        StoreError when it cannot be reached, or refuses this user or an INFO."""
        try:
            server = await self._redis.info("server")
            persistence = await self._redis.info("persistence")
        except (RedisError, OSError) as exc:
            raise self._health.failed("check", "connecting", exc) from None
        try:
            save: str | None = str((await self._redis.config_get("save")).get("save", ""))
        except ResponseError:
            save = None  # CONFIG refused (an ACL, a managed Redis): unknown, not "none"
        except (RedisError, OSError) as exc:
            raise self._health.failed("check", "reading the configuration", exc) from None
        return ServerFacts(
            where=self._where,
            version=str(server.get("redis_version", "unknown")),
            aof=bool(int(persistence.get("aof_enabled", 0))),
            save_points=save.strip() if save is not None else None,
        )

    async def aclose(self) -> None:
        """Close the connections (the broker's lifespan does at shutdown)."""
        await self._redis.aclose()

    # -- TokenStore ----------------------------------------------------------------------

    def status(self) -> StoreStatus:
        return self._health.status

    async def load(self, provider: str, login: str) -> Stored:
        """The newest refresh token and the current token saved for *provider*'s *login*,
        by this broker or another. Raises StoreError when Redis cannot be read, or when the
        saved refresh token cannot be opened (wrong ``state_key``, altered): a broker that
        cannot see the shared refresh token must not present an older one of its own."""
        refresh_key, token_key = self._key(provider, "refresh"), self._key(provider, TOKEN)
        try:
            values = await self._redis.mget([refresh_key, token_key])
        except (RedisError, OSError) as exc:
            raise self._health.failed("load", f"reading {provider}'s tokens", exc) from None
        self._health.reached()
        # Bytes: the client does not decode answers (redis-py types them as either).
        raw_refresh, raw_token = (_raw(v) for v in values)
        refresh_token = self._refresh_token_in(raw_refresh, refresh_key, provider, login)
        token = self._published(raw_token, token_key, provider, login)
        return Stored(refresh_token, token)

    async def save_refresh_token(
        self, provider: str, login: str, refresh_token: str, *, replacing: Replacing | None = None
    ) -> None:
        """Save *refresh_token*; with *replacing*, only if the key still holds that refresh
        token (raises StoreConflict when another broker saved a different one meanwhile)."""
        key = self._key(provider, "refresh")
        if not refresh_token:
            msg = f"{self._where}: refusing to save an empty refresh token for {provider!r}"
            raise StoreError(msg)
        data = self._codec.seal(provider, login, REFRESH_TOKEN, refresh_token, self._clock.wall())
        try:
            if replacing is None:
                await self._redis.set(key, data)
            else:
                await self._save_fenced(key, provider, login, data, replacing)
        except (RedisError, OSError) as exc:
            raise self._health.failed("save", f"saving {provider}'s refresh token", exc) from None
        self._health.reached()

    async def _save_fenced(
        self, key: str, provider: str, login: str, data: bytes, replacing: Replacing
    ) -> None:
        # Optimistic: WATCH makes the SET fail if anyone writes the key between the read
        # and the EXEC, so the check and the write are one step for every other client.
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            current = self._refresh_token_in(_raw(await pipe.get(key)), key, provider, login)
            if current != replacing.refresh_token:
                self._conflict(provider)  # leaving the block unwatches
            pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            pipe.set(key, data)
            try:
                await pipe.execute()
            except WatchError:
                self._conflict(provider)

    def _conflict(self, provider: str) -> None:
        self._health.metrics.conflict(provider)
        msg = (
            f"{self._where}: another broker saved a newer refresh token for {provider} while"
            " this one's lease had expired; keeping theirs"
        )
        raise StoreConflict(msg)

    async def forget(self, provider: str) -> None:
        try:
            await self._redis.delete(self._key(provider, "refresh"))
        except (RedisError, OSError) as exc:
            raise self._health.failed(
                "forget", f"removing {provider}'s refresh token", exc
            ) from None
        self._health.reached()

    async def publish(self, provider: str, login: str, token: Token) -> None:
        """Make *token* the one other brokers load. Never raises: a token that could not be
        published is still served by this broker (logged), and the others refresh on their
        own schedule."""
        remaining = token.expires_at - self._clock.monotonic()
        if remaining <= 0:
            return  # nobody could serve it
        document = token_document(token)
        data = self._codec.seal(provider, login, TOKEN, document, self._clock.wall())
        try:
            # Redis drops it when it expires: an expired token is no use to anyone.
            await self._redis.set(self._key(provider, TOKEN), data, px=math.ceil(remaining * 1000))
        except (RedisError, OSError) as exc:
            log.warning(
                "%s: %s", provider, self._health.failed("publish", "publishing the new token", exc)
            )
            return
        # Announced only once it can be read: a listener loads it on hearing of it.
        self._announced[provider] = token.etag
        try:
            await self._redis.publish(self._channel, f"{provider} {token.etag}")
        except (RedisError, OSError) as exc:
            # The others take it at their next refresh (they read the store first).
            failure = self._health.failed("announce", "announcing the new token", exc)
            log.warning("%s: %s", provider, failure)
            return
        self._health.reached()
        self._health.metrics.announcement("sent")

    def announcements(self) -> AsyncGenerator[str, None]:
        return listen(
            self._redis, self._channel, health=self._health, clock=self._clock, ours=self._announced
        )

    def lease(self, provider: str) -> AbstractAsyncContextManager[None]:
        return self._hold(provider, self._key(provider, "lease"))

    # -- the lease -----------------------------------------------------------------------

    @asynccontextmanager
    async def _hold(self, provider: str, name: str) -> AsyncIterator[None]:
        lease = RedisLease(
            self._redis,
            name,
            provider,
            ttl=self._lease_ttl,
            on_lost=lambda: self._lost(provider),
            on_renew_error=lambda exc: log.warning(
                "%s: %s; trying again", provider, self._health.failed("renew", "renewing", exc)
            ),
        )
        try:
            how = await lease.acquire()
        except (RedisError, OSError) as exc:
            raise self._health.failed("lease", f"taking {provider}'s lease", exc) from None
        self._health.reached()
        self._health.status.leases.add(provider)
        self._health.metrics.lease_acquired(provider, how)
        if how == "takeover":
            log.warning(
                "%s: taking over from a broker whose lease expired (it stopped renewing)",
                provider,
            )
        try:
            yield
        finally:
            self._health.status.leases.discard(provider)
            await self._release(provider, lease)

    def _lost(self, provider: str) -> None:
        self._health.status.leases.discard(provider)
        self._health.metrics.lease_lost(provider)

    async def _release(self, provider: str, lease: RedisLease) -> None:
        try:
            released = await lease.release()
        except (RedisError, OSError) as exc:
            log.warning(
                "%s: %s; it expires by itself within %g s",
                provider,
                self._health.failed("release", "releasing the lease", exc),
                self._lease_ttl,
            )
            return
        if not released:
            self._lost(provider)
            log.warning(
                "%s: the lease had expired when it was released (not renewed for %g s)",
                provider,
                self._lease_ttl,
            )

    # -- helpers -------------------------------------------------------------------------

    @property
    def _channel(self) -> str:
        return f"{self._prefix}{CHANNEL}"

    def _key(self, provider: str, what: str) -> str:
        # The provider name is checked so that it cannot reach into another key (a ':').
        if not PROVIDER_NAME.fullmatch(provider):
            msg = f"invalid provider name {provider!r} (expected [a-z0-9][a-z0-9_-]{{0,62}})"
            raise StoreError(msg)
        return f"{self._prefix}{provider}:{what}"

    def _published(self, raw: bytes | None, key: str, provider: str, login: str) -> Token | None:
        """The published token in *raw*, placed on this broker's clock; None when there is
        none, it is another login's, or it cannot be read (logged: it costs only a token
        request, never the login)."""
        if raw is None:
            return None
        try:
            opened = self._codec.open(f"{self._where}: key {key}", provider, login, TOKEN, raw)
            if opened is None:
                return None
            return placed(json.loads(opened[0]), self._clock)
        except (StateError, ValueError, TypeError, KeyError) as exc:
            why = str(exc) if isinstance(exc, StateError) else f"{key}: not a token document"
            log.warning("%s: ignoring the published token: %s", provider, why)
            return None

    def _refresh_token_in(
        self, raw: bytes | None, key: str, provider: str, login: str
    ) -> str | None:
        """The refresh token in *raw* (None: none, or another login's). Raises StoreError
        when it cannot be opened: a wrong ``state_key``, an altered value."""
        if raw is None:
            return None
        try:
            opened = self._codec.open(
                f"{self._where}: key {key}", provider, login, REFRESH_TOKEN, raw
            )
        except StateError as exc:
            raise StoreError(str(exc)) from None
        return opened[0] if opened is not None else None


def _raw(value: bytes | str | None) -> bytes | None:
    """A value as Redis returned it, as bytes (redis-py types answers as either)."""
    return value.encode() if isinstance(value, str) else value
