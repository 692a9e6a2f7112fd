"""The Redis store's announcements: listening on ``<prefix>announce`` for the tokens other
brokers publish (:meth:`broker.engine.redis_store.RedisStore.announcements`).

A message is ``<provider> <ETag>``: no token crosses the channel, a listener loads it from
its key. A subscription made, or remade by redis-py after a reconnection, is announced as
:data:`~broker.engine.store.EVERY_PROVIDER` (what was announced meanwhile is lost). A
silent connection is pinged: a stalled one raises no error by itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker.core.clock import Clock
from broker.core.names import PROVIDER_NAME
from broker.core.sanitize import shortened
from broker.engine.redis_health import RedisHealth
from broker.engine.store import EVERY_PROVIDER, StoreError

log = logging.getLogger("broker.store")

HEARTBEAT = 5.0
"""Real seconds of silence after which a listener pings Redis; a ping still unanswered
after as long again means a dead connection."""


async def listen(
    redis: Redis,
    channel: str,
    *,
    health: RedisHealth,
    clock: Clock,
    ours: Mapping[str, str],
) -> AsyncGenerator[str, None]:
    """The providers announced on *channel* by other brokers, as they come (*ours*: the
    ETag this broker last announced per provider, skipped when it comes back). Raises
    StoreError when Redis can no longer be listened to."""
    pubsub = redis.pubsub()
    try:
        try:
            await pubsub.subscribe(channel)
        except (RedisError, OSError) as exc:
            raise health.failed("listen", "subscribing to announcements", exc) from None
        pinged = False
        while True:
            try:
                message = await pubsub.get_message(timeout=HEARTBEAT)
                if message is None and not pinged:
                    await pubsub.ping()
            except (RedisError, OSError) as exc:
                raise health.failed("listen", "listening for announcements", exc) from None
            if message is None:
                if pinged:
                    msg = f"{health.where}: no answer to a ping for {HEARTBEAT:g} s"
                    health.unreached(msg, "listen")
                    raise StoreError(msg)
                pinged = True
                continue
            pinged = False
            health.reached()
            provider = _heard(message, ours)
            if provider is None:
                continue
            if provider != EVERY_PROVIDER:
                health.status.last_announcement_wall = clock.wall()
                health.metrics.announcement("received")
            yield provider
    finally:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


def _heard(message: dict[str, Any], ours: Mapping[str, str]) -> str | None:
    """What a pub/sub message announces, or None (a pong, our own announcement, or one
    that is not an announcement: logged)."""
    kind = message.get("type")
    if kind == "subscribe":
        return EVERY_PROVIDER
    if kind != "message":
        return None
    data = message.get("data")
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    provider, _, etag = text.partition(" ")
    if not PROVIDER_NAME.fullmatch(provider):
        log.warning("ignoring an announcement that names no provider: %r", shortened(text, 80))
        return None
    return None if ours.get(provider) == etag else provider
