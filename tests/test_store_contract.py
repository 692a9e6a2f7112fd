"""The contract of :class:`broker.engine.store.TokenStore`: every implementation passes these.

A new store joins by adding an opener to ``STORES``: a function that opens the store over a
:class:`Place` and can open it again there, as a restarted broker would (or another broker
sharing it). For the state directory the place is a directory; for Redis it is a real
redis-server (``tests/redisserver.py``) and a key prefix with a Redis user of its own.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from broker.core.tokens import Token, place_token
from broker.engine.redis_store import RedisStore
from broker.engine.state import StateStore
from broker.engine.store import EVERY_PROVIDER, LocalStore, Stored, StoreError, TokenStore
from tests.redisserver import RedisPlace, RedisServer
from tests.support import FakeClock

pytestmark = pytest.mark.anyio

CLOCK = FakeClock(start=100.0, wall=1_800_000_000.0)
"""The clock tokens are placed on, by the test and by the stores that place the tokens
they load (Redis): at 100.0 it is 1_800_000_000.0 on the wall, as :func:`token` says."""


class Place:
    """Where a store keeps what it saves. A directory (*path*), and for the Redis store a
    prefix on the test process's redis-server, taken only when a store asks for it."""

    def __init__(self, path: Path, request: pytest.FixtureRequest) -> None:
        self.path = path
        self._request = request
        self.opened: list[RedisStore] = []
        """Stores with connections to close at the end."""

    @functools.cached_property
    def redis(self) -> RedisPlace:
        server: RedisServer = self._request.getfixturevalue("redis_server")
        return server.place()

    def redis_store(self, key: bytes | None = None) -> RedisStore:
        store = RedisStore(self.redis.url, clock=CLOCK, key_prefix=self.redis.prefix, key=key)
        self.opened.append(store)
        return store

    def remove(self) -> None:
        """Take the place away from under its stores."""
        shutil.rmtree(self.path, ignore_errors=True)
        if "redis" in self.__dict__:
            self.redis.remove()


Opener = Callable[[Place], TokenStore]
"""Opens a store over the place (the same place again: after a restart, or another broker)."""

KEY = Fernet.generate_key()

STORES: dict[str, Opener] = {
    "state-directory": lambda place: LocalStore(StateStore(place.path)),
    "encrypted-state-directory": lambda place: LocalStore(StateStore(place.path, key=KEY)),
    "memory-only": lambda place: LocalStore(),
    "redis": lambda place: place.redis_store(),
    "encrypted-redis": lambda place: place.redis_store(key=KEY),
}

LOGIN = "login-fingerprint-1"
OTHER_LOGIN = "login-fingerprint-2"
REFRESH = "rt-contract-0123456789"
NEWER = "rt-contract-newer-98765"


@pytest.fixture(params=sorted(STORES))
def opener(request: pytest.FixtureRequest) -> Opener:
    opener: Opener = STORES[request.param]
    return opener


@pytest.fixture
async def place(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Place]:
    here = Place(tmp_path / "store", request)
    yield here
    for store in here.opened:
        await store.aclose()


def token(value: str = "access-token-contract") -> Token:
    return place_token(
        value,
        sent_at=CLOCK.monotonic(),
        sent_at_wall=CLOCK.wall(),
        lifetime=300.0,
        etag_key=b"k" * 32,
        serve_min_remaining=1.0,
    )


async def test_nothing_is_known_about_a_provider_never_saved(opener: Opener, place: Place) -> None:
    assert await opener(place).load("idp", LOGIN) == Stored()


async def test_a_saved_refresh_token_is_loaded_for_its_login_only(
    opener: Opener, place: Place
) -> None:
    store = opener(place)
    await store.save_refresh_token("idp", LOGIN, REFRESH)

    if store.durable:
        assert (await store.load("idp", LOGIN)).refresh_token == REFRESH
    else:
        assert (await store.load("idp", LOGIN)).refresh_token is None
    assert (await store.load("idp", OTHER_LOGIN)).refresh_token is None
    assert (await store.load("other", LOGIN)).refresh_token is None


async def test_the_newest_save_wins_and_survives_a_restart(opener: Opener, place: Place) -> None:
    store = opener(place)
    await store.save_refresh_token("idp", LOGIN, REFRESH)
    await store.save_refresh_token("idp", LOGIN, NEWER)

    restarted = opener(place)
    expected = NEWER if store.durable else None
    assert (await store.load("idp", LOGIN)).refresh_token == expected
    assert (await restarted.load("idp", LOGIN)).refresh_token == expected


async def test_a_forgotten_refresh_token_is_gone_and_forgetting_twice_is_fine(
    opener: Opener, place: Place
) -> None:
    store = opener(place)
    await store.save_refresh_token("idp", LOGIN, REFRESH)
    await store.forget("idp")
    await store.forget("idp")
    await store.forget("never-saved")

    assert (await store.load("idp", LOGIN)).refresh_token is None
    assert (await opener(place).load("idp", LOGIN)).refresh_token is None


async def test_a_published_token_reaches_others_only_through_a_shared_store(
    opener: Opener, place: Place
) -> None:
    store = opener(place)
    published = token()
    await store.publish("idp", LOGIN, published)

    other = opener(place)
    assert (await other.load("idp", LOGIN)).token == (published if store.shared else None)
    # Bound to its provider and login, as a refresh token is.
    assert (await other.load("idp", OTHER_LOGIN)).token is None
    assert (await other.load("other", LOGIN)).token is None


async def test_a_save_that_fails_raises_store_error_without_the_token(
    opener: Opener, place: Place
) -> None:
    store = opener(place)
    if not store.durable:
        pytest.skip("a store that keeps nothing cannot fail to keep something")
    place.remove()  # the place is gone from under the store

    with pytest.raises(StoreError) as failure:
        await store.save_refresh_token("idp", LOGIN, REFRESH)
    assert REFRESH not in str(failure.value)


async def test_a_lease_has_one_holder_at_a_time_per_provider(opener: Opener, place: Place) -> None:
    store = opener(place)
    holding, release, other_in = asyncio.Event(), asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def first() -> None:
        async with store.lease("idp"):
            order.append("first in")
            holding.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        await holding.wait()
        async with store.lease("idp"):
            order.append("second in")

    async def elsewhere() -> None:
        await holding.wait()
        async with store.lease("other"):  # another provider's lease is free
            order.append("other in")
            other_in.set()

    tasks = [asyncio.create_task(f()) for f in (first, second, elsewhere)]
    async with asyncio.timeout(5):
        await other_in.wait()  # the second has been waiting as long as this one ran
    assert "second in" not in order  # the first still holds it
    release.set()
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    assert order.index("first out") < order.index("second in")


async def test_a_lease_is_released_when_its_holder_fails(opener: Opener, place: Place) -> None:
    store = opener(place)
    with pytest.raises(RuntimeError):
        async with store.lease("idp"):
            raise RuntimeError("the token request failed")

    async with asyncio.timeout(5), store.lease("idp"):
        pass


async def test_a_publish_is_announced_to_the_others_sharing_the_store_and_only_there(
    opener: Opener, place: Place
) -> None:
    """A shared store announces a publish to another instance (after saying it has just
    subscribed, so the listener reads what it may have missed), naming only the provider;
    a store of one broker's own announces nothing and costs nothing: its iterator ends."""
    listener, publisher = opener(place), opener(place)
    heard = listener.announcements()
    try:
        async with asyncio.timeout(5):
            if not listener.shared:
                await publisher.publish("idp", LOGIN, token())
                assert [name async for name in heard] == []
                return
            assert await anext(heard) == EVERY_PROVIDER  # subscribed: read everything
            await publisher.publish("idp", LOGIN, token("access-token-announced"))
            assert await anext(heard) == "idp"
            # What it announced is in the store, for the listener to load.
            assert (await listener.load("idp", LOGIN)).token == token("access-token-announced")
            # Its own publish is not announced back to the store that made it.
            await listener.publish("mine", LOGIN, token("access-token-mine"))
            await publisher.publish("idp", LOGIN, token("access-token-later"))
            assert await anext(heard) == "idp"
    finally:
        await heard.aclose()
