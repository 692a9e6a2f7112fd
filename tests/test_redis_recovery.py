"""Redis restarted empty: the replicas put back what it lost from their memory (the refresh
token, the current token) and carry on without a new login, even where no login is possible
(a seeded refresh token alone) and where a reused refresh token would revoke the login.

Two brokers in-process on a fake clock over a real redis-server, as tests/test_replicas.py
(which explains :func:`~tests.test_replicas.quiet`); "restarted empty" is every key under the
test's prefix deleted (:meth:`~tests.redisserver.RedisPlace.empty`).
"""

from __future__ import annotations

import random
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from tests.inprocess import IdPs, in_process
from tests.redisserver import RedisPlace, RedisServer
from tests.support import FakeClock, settings_from
from tests.test_replicas import (
    IDP,
    PROVIDER,
    SEED_ONLY,
    STEP,
    STORE,
    TTL,
    manager,
    quiet,
    replicas,
    reuse_detecting_fake,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("rotating", [True, False], ids=["rotating", "not-rotating"])
async def test_an_emptied_redis_is_repopulated_without_a_new_login(
    redis_server: RedisServer, rotating: bool
) -> None:
    clock = FakeClock()
    fake = reuse_detecting_fake(clock, rotating=rotating)
    place: RedisPlace = redis_server.place()
    seed = fake.seed_refresh_token("alice", client_id="app")
    config = STORE.format(url=place.url, prefix=place.prefix) + PROVIDER.format(idp=IDP)
    config += SEED_ONLY.format(seed=seed)
    refresh_key, token_key = f"{place.prefix}p:refresh".encode(), f"{place.prefix}p:token".encode()
    async with replicas(clock, fake, config, (1, 2)) as (brokers, _routes):
        await quiet(brokers)
        assert {refresh_key, token_key} <= set(place.stored_keys())
        place.empty()
        emptied_at = len(fake.token_requests())
        end = clock.monotonic() + 4 * TTL
        while clock.monotonic() < end:
            for broker in brokers:
                answer = await broker.get("/token/p")
                assert answer.status_code == 200, answer.text
                assert fake.is_access_token_valid(answer.json()["access_token"])
            await clock.advance(STEP)
            await quiet(brokers)
        states = [manager(broker).providers["p"] for broker in brokers]
        keys = set(place.stored_keys())

    assert len(fake.token_requests()) > emptied_at + 2  # it went on refreshing
    assert [state.failures for state in states] == [0, 0]
    assert [state.needs_login for state in states] == [False, False]
    assert fake.is_refresh_token_valid(fake.issued_refresh_tokens[-1]), "the login died"
    presented = [r.form["refresh_token"] for r in fake.token_requests("refresh_token") if r.form]
    if rotating:
        assert len(presented) == len(set(presented)), "a refresh token was presented twice"
    else:
        assert set(presented) == {seed}
    # Put back: the refresh token (even one that never rotates) and the current token.
    assert {refresh_key, token_key} <= keys


async def test_replicas_restarted_with_an_emptied_redis_resume_from_their_own_copies(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis restarted empty and every replica with it: the seed in their config was
    rotated away long ago (presenting it revokes the login), and Redis has nothing. Each
    replica's state_dir copy carries the login on."""
    clock = FakeClock()
    fake = reuse_detecting_fake(clock)
    place: RedisPlace = redis_server.place()
    seed = fake.seed_refresh_token("alice", client_id="app")
    shared = STORE.format(url=place.url, prefix=place.prefix) + PROVIDER.format(idp=IDP)
    shared += SEED_ONLY.format(seed=seed)
    directories = [tmp_path / "a", tmp_path / "b"]
    for directory in directories:
        directory.mkdir(mode=0o700)
    configs = [settings_from(f"state_dir: {d}\n" + shared) for d in directories]

    async def run(until: float) -> list[int]:
        idps = [IdPs(clock), IdPs(clock)]
        for route in idps:
            route.serve(IDP, fake.app)
        async with AsyncExitStack() as stack:
            brokers = [
                await stack.enter_async_context(in_process(c, r, rng=random.Random(i)))
                for i, (c, r) in enumerate(zip(configs, idps, strict=True))
            ]
            await quiet(brokers)
            while clock.monotonic() < until:
                for broker in brokers:
                    answer = await broker.get("/token/p")
                    assert answer.status_code == 200, answer.text
                await clock.advance(STEP)
                await quiet(brokers)
            return [manager(b).providers["p"].failures for b in brokers]

    assert await run(clock.monotonic() + 2 * TTL) == [0, 0]
    assert len(fake.token_requests()) >= 3  # the seed is long rotated away
    place.empty()
    assert await run(clock.monotonic() + 2 * TTL) == [0, 0]

    presented = [r.form["refresh_token"] for r in fake.token_requests("refresh_token") if r.form]
    assert len(presented) == len(set(presented)), "a refresh token was presented twice"
    assert fake.is_refresh_token_valid(fake.issued_refresh_tokens[-1]), "the login died"
    assert f"{place.prefix}p:refresh".encode() in place.stored_keys()
