"""The Redis store beyond the store contract (tests/test_store_contract.py runs that against
it too): its keys, its lease across brokers, and its secrets. On a real redis-server
(tests/redisserver.py), never a mock.

Two lease tests hold or lose a lease for longer than its ``lease_ttl`` on purpose: the
expiry that Redis applies on its own clock is the thing under test, so they take real
time (a ``lease_ttl`` of 1 s, 2.5 s each, bounded) and are marked smoke. Everything else
waits only for Redis's answers (milliseconds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote, quote_plus

import pytest
from cryptography.fernet import Fernet

from broker.core.tokens import Token, place_token
from broker.engine.redis_store import RedisStore
from broker.engine.store import Replacing, StoreConflict, StoreError
from broker.ops.metrics import Metrics
from tests.redisserver import RedisPlace, RedisServer
from tests.support import ROOT, FakeClock, free_port

pytestmark = pytest.mark.anyio

LOGIN = "login-fingerprint-1"
REFRESH = "rt-redis-0123456789"
ACCESS = "at-redis-0123456789"

SHORT_TTL = 1.0
"""Real seconds: the lease_ttl of the tests where Redis's expiry is what is tested."""

Open = Callable[..., RedisStore]


@pytest.fixture
def place(redis_server: RedisServer) -> RedisPlace:
    return redis_server.place()


@pytest.fixture
async def open_store(place: RedisPlace) -> AsyncIterator[Open]:
    """Opens RedisStores over the test's place (each is another broker); closes them all."""
    opened: list[RedisStore] = []

    def open_(**kwargs: object) -> RedisStore:
        options: dict[str, object] = {"clock": FakeClock(), "key_prefix": place.prefix}
        options.update(kwargs)
        store = RedisStore(str(options.pop("url", place.url)), **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.aclose()


def leases(metrics: Metrics, how: str) -> float:
    """How many leases on ``idp`` the broker with *metrics* took *how*."""
    value = metrics.registry.get_sample_value(
        "broker_store_lease_acquisitions_total", {"provider": "idp", "how": how}
    )
    return value or 0.0


def token(clock: FakeClock, value: str = ACCESS, lifetime: float = 300.0) -> Token:
    return place_token(
        value,
        sent_at=clock.monotonic(),
        sent_at_wall=clock.wall(),
        lifetime=lifetime,
        etag_key=b"k" * 32,
        serve_min_remaining=1.0,
    )


# -- keys and values ------------------------------------------------------------------------


async def test_each_provider_has_its_keys_under_the_prefix(
    open_store: Open, place: RedisPlace
) -> None:
    clock = FakeClock()
    store = open_store(clock=clock)
    await store.save_refresh_token("idp", LOGIN, REFRESH)
    await store.publish("idp", LOGIN, token(clock, lifetime=300.0))
    async with store.lease("idp"):
        held = place.stored_keys()
        lease_left = place.pttl(f"{place.prefix}idp:lease")

    prefix = place.prefix.encode()
    assert held == [prefix + b"idp:lease", prefix + b"idp:refresh", prefix + b"idp:token"]
    assert 0 < lease_left <= 10_000  # lease_ttl's default: it expires by itself
    assert place.stored_keys() == [prefix + b"idp:refresh", prefix + b"idp:token"]  # released
    assert place.pttl(f"{place.prefix}idp:refresh") == -1  # kept until replaced
    # The published token goes when it expires (300 s on the broker's clock).
    assert 299_000 < place.pttl(f"{place.prefix}idp:token") <= 300_000


async def test_a_published_token_is_placed_on_the_readers_clock(open_store: Open) -> None:
    """Two brokers' monotonic clocks have nothing in common: a token crosses by its wall
    expiry and lifetime, and keeps its ETag."""
    theirs = FakeClock(start=100.0, wall=1_800_000_000.0)
    ours = FakeClock(start=5_000.0, wall=1_800_000_010.0)  # 10 s later on the wall
    published = token(theirs, lifetime=300.0)
    await open_store(clock=theirs).publish("idp", LOGIN, published)

    seen = (await open_store(clock=ours).load("idp", LOGIN)).token
    assert seen is not None
    assert seen.access_token == ACCESS
    assert seen.etag == published.etag
    assert seen.expires_at_wall == published.expires_at_wall
    assert seen.expires_at == pytest.approx(5_000.0 + 290.0)
    assert seen.lifetime == pytest.approx(300.0)
    assert seen.servable(ours.monotonic())


async def test_an_expired_token_is_not_published(open_store: Open, place: RedisPlace) -> None:
    clock = FakeClock()
    old = token(clock, lifetime=10.0)
    await clock.advance(11.0)
    await open_store(clock=clock).publish("idp", LOGIN, old)
    assert place.stored_keys() == []


async def test_with_a_key_nothing_readable_is_written_and_another_key_reads_nothing(
    open_store: Open, place: RedisPlace
) -> None:
    clock = FakeClock()
    store = open_store(clock=clock, key=Fernet.generate_key())
    await store.save_refresh_token("idp", LOGIN, REFRESH)
    await store.publish("idp", LOGIN, token(clock))

    for key in place.stored_keys():
        value = place.get(key.decode())
        assert value is not None
        assert REFRESH.encode() not in value
        assert ACCESS.encode() not in value
        assert b'"encrypted"' in value

    # A broker that cannot open the shared refresh token must not go on with an older one
    # of its own: loading fails (the engine then sends no request) rather than look empty.
    for other in (open_store(key=Fernet.generate_key()), open_store()):
        with pytest.raises(StoreError, match="refresh is unusable") as failure:
            await other.load("idp", LOGIN)
        assert REFRESH not in str(failure.value)


async def test_an_unreadable_published_token_is_ignored(
    open_store: Open, place: RedisPlace, caplog: pytest.LogCaptureFixture
) -> None:
    """It costs a token request, never the login: the refresh token is still loaded."""
    store = open_store()
    await store.save_refresh_token("idp", LOGIN, REFRESH)
    with place.server.admin() as admin:
        admin.set(f"{place.prefix}idp:token", json.dumps({"version": 1}))

    stored = await store.load("idp", LOGIN)
    assert stored.refresh_token == REFRESH
    assert stored.token is None
    assert "ignoring the published token" in caplog.text


# -- the lease across brokers ---------------------------------------------------------------


async def test_two_brokers_never_hold_a_providers_lease_at_once(open_store: Open) -> None:
    """Two stores (two replicas, each with its connections), three tasks each, all after
    the same lease: one holder at any moment, and every one gets its turn."""
    metrics = [Metrics(), Metrics()]
    replicas = [open_store(metrics=m.store) for m in metrics]
    holding: list[str] = []
    most = 0
    turns = 0

    async def take_turns(store: RedisStore, name: str) -> None:
        nonlocal most, turns
        for _ in range(5):
            async with store.lease("idp"):
                holding.append(name)
                most = max(most, len(holding))
                await store.load("idp", LOGIN)  # a real round trip while holding it
                await asyncio.sleep(0)
                holding.remove(name)
                turns += 1

    async with asyncio.timeout(30):
        await asyncio.gather(
            *(take_turns(store, f"r{r}t{t}") for r, store in enumerate(replicas) for t in range(3))
        )
    assert most == 1
    assert turns == 2 * 3 * 5
    # Every holder released its lease: some were free, the rest waited; none taken over.
    assert sum(leases(m, "free") + leases(m, "waited") for m in metrics) == turns
    assert sum(leases(m, "waited") for m in metrics) > 0
    assert sum(leases(m, "takeover") for m in metrics) == 0


@pytest.mark.smoke  # real time: Redis's own expiry is the thing under test
async def test_a_holder_working_longer_than_the_lease_ttl_keeps_it(
    open_store: Open, place: RedisPlace
) -> None:
    """Renewed every third of lease_ttl, even across a cut connection (the renewal
    reconnects): another broker waits the whole time, and gets it once it is released.
    Takes 2.5 lease_ttl of real time: the expiry it outlives is Redis's."""
    seen = Metrics()
    holder, other = (
        open_store(lease_ttl=SHORT_TTL),
        open_store(lease_ttl=SHORT_TTL, metrics=seen.store),
    )
    events: list[str] = []
    held = asyncio.Event()

    async def hold() -> None:
        async with holder.lease("idp"):
            events.append("holder in")
            held.set()
            await asyncio.sleep(1.2 * SHORT_TTL)
            with place.server.admin() as admin:  # cut every connection of this place
                admin.client_kill_filter(user=place.user)
            await asyncio.sleep(1.3 * SHORT_TTL)
            events.append("holder out")

    async def wait_for_it() -> None:
        await held.wait()
        async with other.lease("idp"):
            events.append("other in")

    started = time.monotonic()
    async with asyncio.timeout(10 * SHORT_TTL):
        await asyncio.gather(hold(), wait_for_it())
    assert events == ["holder in", "holder out", "other in"]
    assert time.monotonic() - started >= 2.5 * SHORT_TTL
    assert (leases(seen, "waited"), leases(seen, "takeover")) == (1, 0)  # it was released


HOLD_AND_HANG = """
import asyncio, os
from broker.core.clock import SystemClock
from broker.engine.redis_store import RedisStore

async def main():
    store = RedisStore(os.environ["REDIS_URL"], clock=SystemClock(),
                       key_prefix=os.environ["PREFIX"], lease_ttl=float(os.environ["TTL"]))
    async with store.lease("idp"):
        print("held", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.smoke  # real time: Redis's own expiry is the thing under test
async def test_a_dead_holders_lease_is_free_after_the_lease_ttl(
    open_store: Open, place: RedisPlace
) -> None:
    """A broker SIGKILLed while holding the lease releases nothing and renews no more:
    the lease stays taken until Redis expires it, lease_ttl after the last renewal, then
    the next broker gets it. Takes about lease_ttl of real time: that expiry is the test."""
    env = {**os.environ, "REDIS_URL": place.url, "PREFIX": place.prefix, "TTL": str(SHORT_TTL)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_AND_HANG, cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"held\n"
        await asyncio.sleep(1.5 * SHORT_TTL)  # renewed meanwhile: still held
        assert place.pttl(f"{place.prefix}idp:lease") > 0
        child.send_signal(signal.SIGKILL)
        await child.wait()
        killed = time.monotonic()
        assert place.pttl(f"{place.prefix}idp:lease") > 0  # nobody released it

        seen = Metrics()
        survivor = open_store(lease_ttl=SHORT_TTL, metrics=seen.store)
        async with asyncio.timeout(3 * SHORT_TTL), survivor.lease("idp"):
            waited = time.monotonic() - killed
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    # Freed by its expiry: no later than lease_ttl after the kill (plus the waiting
    # broker's polling interval and some scheduling slack); counted as a takeover.
    assert waited <= SHORT_TTL + 0.5
    assert (leases(seen, "takeover"), leases(seen, "waited")) == (1, 0)


# -- the fence ------------------------------------------------------------------------------


async def test_a_fenced_save_never_overwrites_what_another_broker_saved(
    open_store: Open,
) -> None:
    """A broker whose lease expired under it (Redis out for longer than lease_ttl) read
    ``old`` inside it; meanwhile the next holder saved ``theirs``. Its own save must not
    replace theirs: it fails as a conflict, counted, and theirs stays."""
    seen = Metrics()
    late, next_holder = open_store(metrics=seen.store), open_store()
    old, theirs, ours = "rt-old-0123456789", "rt-theirs-0123456789", "rt-ours-0123456789"
    await next_holder.save_refresh_token("idp", LOGIN, old)
    await next_holder.save_refresh_token("idp", LOGIN, theirs, replacing=Replacing(old))
    with pytest.raises(StoreConflict) as conflict:
        await late.save_refresh_token("idp", LOGIN, ours, replacing=Replacing(old))
    assert "another broker saved a newer refresh token for idp" in str(conflict.value)
    assert ours not in str(conflict.value)
    assert theirs not in str(conflict.value)
    assert (await late.load("idp", LOGIN)).refresh_token == theirs
    value = seen.registry.get_sample_value("broker_store_conflicts_total", {"provider": "idp"})
    assert value == 1
    # What it read is what is there: saved. And nothing read, nothing there: saved too
    # (a Redis restarted empty is repopulated).
    await late.save_refresh_token("idp", LOGIN, ours, replacing=Replacing(theirs))
    assert (await late.load("idp", LOGIN)).refresh_token == ours
    await late.forget("idp")
    await late.save_refresh_token("idp", LOGIN, theirs, replacing=Replacing(None))
    assert (await late.load("idp", LOGIN)).refresh_token == theirs
    with pytest.raises(StoreConflict):
        await late.save_refresh_token("idp", LOGIN, ours, replacing=Replacing(None))


# -- secrets --------------------------------------------------------------------------------


def spellings(password: str) -> list[str]:
    return [password, quote(password, safe=""), quote(password), quote_plus(password)]


async def test_the_url_and_its_password_never_show(
    open_store: Open, place: RedisPlace, caplog: pytest.LogCaptureFixture
) -> None:
    """Not in a repr, not in an error (a refused connection, a wrong password, a place
    taken away mid-work), not in a log line, written as configured or URL-encoded."""
    caplog.set_level(logging.DEBUG)  # redis-py's own debug lines as well
    good = open_store()
    wrong = open_store(url=place.server.url(place.user, "wrong-" + place.password))
    nowhere_url = f"redis://{place.user}:{quote(place.password, safe='')}@127.0.0.1:{free_port()}/0"
    nowhere = open_store(url=nowhere_url)
    texts = [repr(good), repr(wrong), repr(nowhere)]

    await good.save_refresh_token("idp", LOGIN, REFRESH)
    for store in (wrong, nowhere):
        with pytest.raises(StoreError) as failure:
            await store.load("idp", LOGIN)
        texts.append(str(failure.value))
    place.remove()
    with pytest.raises(StoreError) as failure:
        async with good.lease("idp"):
            pass
    texts.append(str(failure.value))
    await good.publish("idp", LOGIN, token(FakeClock()))  # logged, not raised
    texts.append(caplog.text)

    assert "Redis at 127.0.0.1:" in texts[0]
    assert "taking idp's lease failed" in texts[-2]
    assert "publishing the new token failed" in caplog.text
    secrets = [*spellings(place.password), *spellings("wrong-" + place.password)]
    for text in texts:
        for secret in secrets:
            assert secret not in text
    # The log filter gets the password (it redacts every spelling and piece by itself).
    assert good.secret_values() == [place.password]


async def test_a_bad_url_is_refused_without_showing_it() -> None:
    clock = FakeClock()
    with pytest.raises(StoreError) as failure:
        RedisStore("http://user:hunter2-SECRET@127.0.0.1:1/0", clock=clock)
    assert "hunter2" not in str(failure.value)
    with pytest.raises(StoreError, match="not a valid Fernet key") as failure:
        RedisStore("redis://:hunter2-SECRET@127.0.0.1:1/0", clock=clock, key=b"short")
    assert "hunter2" not in str(failure.value)
