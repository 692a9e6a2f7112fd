"""Two brokers (replicas) with the same login, sharing one Redis (``store.backend: redis``), in
front of one identity provider that rotates refresh tokens and detects their reuse: a
rotated-away refresh token presented again revokes the whole login (RFC 9700 §4.14.2).

Without the shared store the second replica to refresh would present the refresh token the
first had already rotated and the login would die for both. With it, over several refresh
cycles no refresh token is ever presented twice, no request fails, the login is made once,
the identity provider sees one token request per cycle rather than one per replica, and
both replicas serve valid tokens throughout.

The brokers and the fake run in one event loop on a fake clock (tests/inprocess.py); Redis
is a real redis-server on real sockets. Two consequences:

- The harness's ``settle()`` sees callbacks, not sockets: while a broker waits for Redis
  the loop looks idle. So after every step of the clock the test waits, in real time, for
  the token requests in flight to finish (:func:`quiet`), and only then reads the tokens:
  the brokers' Redis work never overlaps a move of the clock.
- A lease's expiry runs on Redis's real clock, not the fake one. A lease is held only
  while a token request is in flight, a few milliseconds of real time here, and the clock
  does not move meanwhile (see above); ``lease_ttl`` is 10 real seconds, so a lease never
  expires under its holder, however far the fake clock goes, and its renewal (every
  ``lease_ttl / 3`` of real time) does not come into play. The published tokens' expiry
  in Redis is their remaining life, in real seconds: longer than this test runs.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest

from broker.core.tokens import Token
from broker.engine.manager import TokenManager
from broker.engine.provider import Provider
from broker.engine.redis_store import RedisStore
from broker.engine.store import Stored
from broker.engine.token_request import TokenRequester
from broker.fakes import FakeOAuth2, WorldQuirks
from broker.fakes.server import serve_in_thread
from tests.inprocess import IdPs, InProcess, in_process
from tests.redisserver import RedisPlace, RedisServer
from tests.support import FakeClock, free_port, process, ready, settings_from, settle, wait_for

pytestmark = pytest.mark.anyio

TTL = 30.0
"""The fake's token lifetime (fake seconds): a refresh about every 20."""
CYCLES = 6
"""Token lifetimes to watch."""
STEP = 1.0
"""Fake seconds between two looks at what the replicas serve."""
IDP = "http://127.0.0.1:9001"
REAL_PATIENCE = 30.0
"""Real seconds the brokers' token requests may take to finish before the test fails."""

STORE = """
store:
  backend: redis
  url: "{url}"
  key_prefix: "{prefix}"
  lease_ttl: 10
"""
PROVIDER = """
providers:
  p:
    type: oauth2
    token_url: "{idp}/oauth/token"
    client_id: app
    client_secret: app-secret
"""
PASSWORD = "    grant: password\n    username: alice\n    password: alice-pw\n"
SEED_ONLY = "    grant: refresh_token\n    refresh_token: {seed}\n"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def reuse_detecting_fake(clock: FakeClock, *, rotating: bool = True) -> FakeOAuth2:
    """The replicas' identity provider: client ``app``, user ``alice``, tokens of TTL on
    *clock*; refresh tokens rotated (and the old one killed) when *rotating*, and a reused
    rotated-away one revokes the whole login."""
    return FakeOAuth2(
        clients={"app": "app-secret"},
        users={"alice": "alice-pw"},
        ttl=TTL,
        rotate_refresh_tokens=rotating,
        revoke_rotated_refresh_tokens=rotating,
        quirks=WorldQuirks(reuse_revokes_family=True),
        now=clock.wall,
    )


@pytest.fixture
def fake(clock: FakeClock) -> FakeOAuth2:
    return reuse_detecting_fake(clock)


@pytest.fixture
def place(redis_server: RedisServer) -> RedisPlace:
    return redis_server.place()


def manager(broker: InProcess) -> TokenManager:
    running = broker.app.runtime.manager
    assert running is not None
    return running


async def quiet(brokers: list[InProcess]) -> None:
    """Wait until no broker has a token request in flight (each runs its Redis commands
    on a real socket, which the fake clock cannot see); the clock does not move."""
    deadline = time.monotonic() + REAL_PATIENCE
    while True:
        await settle()
        inflight = [
            provider.inflight
            for broker in brokers
            for provider in manager(broker).providers.values()
            if provider.inflight is not None
        ]
        if not inflight:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"token requests still in flight after {REAL_PATIENCE:g} real seconds")
        await asyncio.wait(inflight, timeout=left)


@asynccontextmanager
async def replicas(
    clock: FakeClock, fake: FakeOAuth2, config: str, seeds: tuple[int, int]
) -> AsyncIterator[tuple[list[InProcess], list[IdPs]]]:
    """Two brokers on *config*, each with its own way to the fake (so the test can tell
    whose requests reached it) and its refresh jitter drawn from its own seed."""
    settings = settings_from(config)
    routes = [IdPs(clock), IdPs(clock)]
    for idps in routes:
        idps.serve(IDP, fake.app)
    async with AsyncExitStack() as stack:
        brokers = [
            await stack.enter_async_context(in_process(settings, idps, rng=random.Random(seed)))
            for idps, seed in zip(routes, seeds, strict=True)
        ]
        yield brokers, routes


@pytest.mark.parametrize(
    "login",
    [
        pytest.param(PASSWORD, id="password"),
        pytest.param(SEED_ONLY, id="seeded-refresh-token-only"),
    ],
)
@pytest.mark.parametrize(
    "seeds",
    [
        pytest.param((1, 2), id="apart"),
        pytest.param((0, 0), id="same-moment"),  # the same jitter: both refresh at once
    ],
)
async def test_replicas_share_one_login_and_never_present_a_refresh_token_twice(
    clock: FakeClock, fake: FakeOAuth2, place: RedisPlace, login: str, seeds: tuple[int, int]
) -> None:
    seed = fake.seed_refresh_token("alice", client_id="app")
    config = STORE.format(url=place.url, prefix=place.prefix) + PROVIDER.format(idp=IDP)
    config += login.format(seed=seed)
    async with replicas(clock, fake, config, seeds) as (brokers, routes):
        end = clock.monotonic() + CYCLES * TTL
        served: list[set[str]] = [set(), set()]
        await quiet(brokers)
        while clock.monotonic() < end:
            for broker, tokens in zip(brokers, served, strict=True):
                answer = await broker.get("/token/p")
                assert answer.status_code == 200, answer.text
                token = answer.json()["access_token"]
                assert fake.is_access_token_valid(token), "served a token the IdP refuses"
                tokens.add(token)
            await clock.advance(STEP)
            await quiet(brokers)

        states = [manager(broker).providers["p"] for broker in brokers]
        sent = [len(idps.times(IDP, "/oauth/token")) for idps in routes]
        obtained = [state.refreshes for state in states]

    presented = [r.form["refresh_token"] for r in fake.token_requests("refresh_token") if r.form]
    assert len(presented) == len(set(presented)), "a refresh token was presented twice"
    assert fake.is_refresh_token_valid(fake.issued_refresh_tokens[-1]), "the login died"
    assert [state.failures for state in states] == [0, 0]
    assert [state.needs_login for state in states] == [False, False]
    # One login for both (the second replica took the first one's token) ...
    assert len(fake.token_requests("password")) == (1 if login == PASSWORD else 0)
    # ... and one token request per refresh interval, not one per replica: the shortest
    # interval is (ratio - jitter) of the lifetime, (2/3 - 0.1) * 30 s = 17 s.
    requests = len(fake.token_requests())
    assert sum(sent) == requests
    assert requests <= 1 + math.ceil(CYCLES * TTL / ((2 / 3 - 0.1) * TTL))
    # Each replica had every token the identity provider issued (all but the newest, at
    # worst, if it came just before the end): the one that did not ask took it from the
    # other. And both served them.
    assert min(obtained) >= requests - 1
    assert len(served[0] & served[1]) >= requests - 1


async def refreshes(clock: FakeClock, brokers: list[InProcess], fake: FakeOAuth2, n: int) -> None:
    """Move the clock, a step at a time, until the fake has seen *n* refresh requests."""
    deadline = clock.monotonic() + n * TTL
    while len(fake.token_requests("refresh_token")) < n:
        assert clock.monotonic() < deadline, "the broker stopped refreshing"
        await clock.advance(STEP)
        await quiet(brokers)


async def test_a_refresh_token_redis_did_not_take_is_not_replaced_by_its_older_one(
    clock: FakeClock, fake: FakeOAuth2, place: RedisPlace
) -> None:
    """A rotated refresh token whose save to Redis failed lives in the broker's memory only;
    Redis still holds the one it was rotated from, dead at the identity provider. Reading
    Redis before the next refresh must not bring that one back: presented again, it would
    revoke the login (reuse detection)."""
    config = STORE.format(url=place.url, prefix=place.prefix) + PROVIDER.format(idp=IDP)
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    async with in_process(settings_from(config + PASSWORD), idps) as broker:
        await quiet([broker])
        state = manager(broker).providers["p"]
        refresh_key = f"{place.prefix}p:refresh"
        with place.server.admin() as admin:  # the refresh token may be read, not written
            admin.acl_setuser(
                place.user,
                enabled=True,
                reset_keys=True,
                keys=[f"{place.prefix}p:lease", f"{place.prefix}p:token", f"%R~{refresh_key}"],
            )
        await refreshes(clock, [broker], fake, 1)
        unsaved = state.persist_error  # rotated, and kept in memory only
        assert unsaved is not None
        assert "saving p's refresh token failed" in unsaved
        with place.server.admin() as admin:
            admin.acl_setuser(place.user, enabled=True, reset_keys=True, keys=[f"{place.prefix}*"])
        await refreshes(clock, [broker], fake, 3)
        assert state.persist_error is None
        login = state.login_id

    presented = [r.form["refresh_token"] for r in fake.token_requests("refresh_token") if r.form]
    assert len(presented) == len(set(presented)), "a refresh token was presented twice"
    assert presented[1] == fake.issued_refresh_tokens[1]  # the one only memory held
    assert state.failures == 0
    assert fake.is_refresh_token_valid(fake.issued_refresh_tokens[-1]), "the login died"
    reader = RedisStore(place.url, clock=clock, key_prefix=place.prefix)
    try:
        assert (await reader.load("p", login)).refresh_token == fake.issued_refresh_tokens[-1]
    finally:
        await reader.aclose()


# -- a broker process ---------------------------------------------------------------------------


@pytest.mark.smoke
def test_a_broker_process_on_redis_serves_and_never_logs_the_url(
    tmp_path: Path, place: RedisPlace
) -> None:
    """``broker serve`` with the store from the config (its URL from the environment), at
    log level debug, redis-py's own lines included: it serves, keeps its keys in Redis,
    reports a Redis it can no longer use, stops cleanly, and no line holds the URL or its
    password in any spelling."""
    fake = FakeOAuth2(clients={"app": "app-secret"}, users={"alice": "alice-pw"}, ttl=60)
    port = free_port()
    with serve_in_thread(fake.app) as idp:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"port: {port}\nlog_level: debug\n"
            f"store:\n  backend: redis\n  url: {{env: TEST_REDIS_URL}}\n"
            f"  key_prefix: '{place.prefix}'\n" + PROVIDER.format(idp=idp) + PASSWORD
        )
        config.chmod(0o600)
        with process("serve", "--config", str(config), env={"TEST_REDIS_URL": place.url}) as broker:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: ready(base, broker.proc), timeout=30)
            token = httpx.get(f"{base}/token/p", timeout=10).json()["access_token"]
            assert fake.is_access_token_valid(token)
            prefix = place.prefix.encode()
            assert place.stored_keys() == [prefix + b"p:refresh", prefix + b"p:token"]
            place.remove()  # from now on every command fails
            httpx.post(f"{base}/token/p/refresh", timeout=10)
            wait_for(lambda: "taking p's lease failed" in broker.output, timeout=30)
    for secret in (place.url, *spellings(place.password)):
        assert secret not in broker.output
    assert "Redis at 127.0.0.1:" in broker.output
    # Only the password is redacted: an address that shares a piece with the URL is not.
    assert f"POST {idp}/oauth/token" in broker.output


def spellings(password: str) -> list[str]:
    return [password, quote(password, safe=""), quote(password), quote_plus(password)]


# -- publish, then serve from memory ---------------------------------------------------------

ANNOUNCE_PATIENCE = 5.0
"""Real seconds an announced token has to reach the other replica before the test fails (a
limit for failing; the delays measured are printed)."""


def served_now(brokers: list[InProcess]) -> list[str | None]:
    """The token each broker would serve now, read from its memory as a GET does."""
    tokens = [manager(broker).current("p") for broker in brokers]
    return [token.access_token if token is not None else None for token in tokens]


async def converged(brokers: list[InProcess]) -> float:
    """Wait, in real time, until every broker holds the same token; return how long that
    took (real seconds). The clock does not move meanwhile."""
    started = time.perf_counter()
    while len(set(served_now(brokers))) != 1:
        if time.perf_counter() - started > ANNOUNCE_PATIENCE:
            pytest.fail(f"the replicas hold different tokens: {served_now(brokers)}")
        # Real time for the listener's Redis round trip (a socket the fake clock cannot see).
        await asyncio.sleep(0.0005)
    return time.perf_counter() - started


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Real seconds from each token's publication (its announcement goes out at once) to
    its install by another broker (when it takes the token: nothing awaited in between)."""
    published: dict[str, float] = {}
    measured: list[float] = []
    publish, adopt = RedisStore.publish, TokenRequester.adopt

    async def publishing(store: RedisStore, provider: str, login: str, token: Token) -> None:
        await publish(store, provider, login, token)
        published[token.access_token] = time.perf_counter()

    def adopting(requester: TokenRequester, provider: Provider, stored: Stored) -> Token | None:
        token = adopt(requester, provider, stored)
        if token is not None and token.access_token in published:
            measured.append(time.perf_counter() - published[token.access_token])
        return token

    monkeypatch.setattr(RedisStore, "publish", publishing)
    monkeypatch.setattr(TokenRequester, "adopt", adopting)
    return measured


async def logged(caplog: pytest.LogCaptureFixture, text: str, count: int) -> None:
    """Wait, in real time, until *count* log lines hold *text* (the brokers' listeners act
    on Redis's sockets, which the fake clock cannot see)."""
    deadline = time.perf_counter() + ANNOUNCE_PATIENCE
    while sum(text in record.getMessage() for record in caplog.records) < count:
        assert time.perf_counter() < deadline, f"not logged {count} times: {text!r}"
        await asyncio.sleep(0.0005)


def report(what: str, delays: list[float]) -> None:
    ordered = sorted(delays)
    p50, worst = ordered[len(ordered) // 2], ordered[-1]
    print(
        f"\n{what}: {len(delays)} announcements, p50 {p50 * 1000:.2f} ms, max {worst * 1000:.2f} ms"
    )


def sample(exposition: str, series: str) -> float:
    """The value of *series* (name and labels, as exposed) in a Prometheus text page."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {series} in the metrics")


async def test_a_token_one_replica_obtains_is_served_by_the_other_without_a_request(
    clock: FakeClock, fake: FakeOAuth2, place: RedisPlace, delays: list[float]
) -> None:
    config = STORE.format(url=place.url, prefix=place.prefix) + PROVIDER.format(idp=IDP)
    async with replicas(clock, fake, config + PASSWORD, (1, 2)) as (brokers, routes):
        await quiet(brokers)
        await converged(brokers)
        for _ in range(5):
            # A token obtained a moment later expires later: that is how B tells it newer.
            await clock.advance(STEP)
            await quiet(brokers)
            sent = [len(idps.times(IDP, "/oauth/token")) for idps in routes]
            answer = await brokers[0].client.post("/token/p/refresh")  # A alone asks
            assert answer.status_code == 200, answer.text
            new = answer.json()["access_token"]
            # A published and announced it before answering: from here, B's listener.
            await converged(brokers)
            after = (await brokers[1].get("/token/p")).json()["access_token"]
            assert after == new, "B does not serve the token A obtained"
            now = [len(idps.times(IDP, "/oauth/token")) for idps in routes]
            assert now == [sent[0] + 1, sent[1]], "B asked the identity provider itself"
        # Each side counts what it sent and heard, and B says when it last heard.
        metrics = [(await broker.get("/metrics")).text for broker in brokers]
        store_b = (await brokers[1].get("/providers")).json()["store"]
    assert sample(metrics[0], 'broker_store_announcements_total{direction="sent"}') >= 5
    assert sample(metrics[1], 'broker_store_announcements_total{direction="received"}') >= 5
    assert store_b["last_announcement"] is not None
    assert store_b["connected"] is True
    report("announcement to install (forced refresh on A)", delays)


async def test_over_many_cycles_one_token_request_per_cycle_and_one_token_everywhere(
    clock: FakeClock, fake: FakeOAuth2, place: RedisPlace, delays: list[float]
) -> None:
    config = STORE.format(url=place.url, prefix=place.prefix) + PROVIDER.format(idp=IDP)
    async with replicas(clock, fake, config + PASSWORD, (1, 2)) as (brokers, routes):
        await quiet(brokers)
        await converged(brokers)
        requests, changes = len(fake.token_requests()), 0
        current = served_now(brokers)[0]
        end = clock.monotonic() + CYCLES * TTL
        while clock.monotonic() < end:
            await clock.advance(STEP)
            await quiet(brokers)
            await converged(brokers)  # both serve the same token at every step
            now = len(fake.token_requests())
            assert now - requests in (0, 1), "more than one token request in one cycle"
            if served_now(brokers)[0] != current:
                assert now == requests + 1, "a new token without a request, or the reverse"
                changes += 1
                current = served_now(brokers)[0]
            requests = now
        sent = [len(idps.times(IDP, "/oauth/token")) for idps in routes]
    # One login, then exactly one request per refresh cycle, whoever of the two sent it.
    assert requests == 1 + changes == sum(sent)
    assert changes >= CYCLES  # a refresh about every 2/3 of the lifetime: ~9 in 6 lifetimes
    assert len(fake.token_requests("password")) == 1
    report(f"announcement to install over {changes} refresh cycles", delays)


async def test_a_garbage_token_value_is_logged_and_the_current_token_kept(
    clock: FakeClock, fake: FakeOAuth2, place: RedisPlace, caplog: pytest.LogCaptureFixture
) -> None:
    config = STORE.format(url=place.url, prefix=place.prefix) + PROVIDER.format(idp=IDP)
    async with replicas(clock, fake, config + PASSWORD, (1, 2)) as (brokers, _routes):
        await quiet(brokers)
        await converged(brokers)
        await clock.advance(STEP)  # A's next token (below) expires later than the current one
        await quiet(brokers)
        before = served_now(brokers)[1]
        with place.server.admin() as admin:
            admin.set(f"{place.prefix}p:token", b"\x00not a token document\xff")
            admin.publish(f"{place.prefix}announce", "p some-etag")
            admin.publish(f"{place.prefix}announce", "../not a provider")
        await logged(caplog, "p: ignoring the published token", 2)  # A's and B's
        answer = await brokers[1].get("/token/p")
        assert answer.status_code == 200
        assert answer.json()["access_token"] == before
        assert [len(manager(b).background.named("announcements")) for b in brokers] == [1, 1]
        # Still listening: A's next token reaches B.
        new = (await brokers[0].client.post("/token/p/refresh")).json()["access_token"]
        await converged(brokers)
        assert served_now(brokers) == [new, new]
        assert manager(brokers[1]).providers["p"].failures == 0


async def test_a_listener_that_lost_redis_listens_again_and_reads_what_it_missed(
    clock: FakeClock, fake: FakeOAuth2, place: RedisPlace, caplog: pytest.LogCaptureFixture
) -> None:
    """The channel is taken away (Redis drops its subscribers) while A obtains a new token:
    its announcement is lost. When the channel is back, B's listener, retrying on its
    backoff, subscribes again and reads every provider: it takes A's token, no request."""
    config = STORE.format(url=place.url, prefix=place.prefix) + PROVIDER.format(idp=IDP)
    async with replicas(clock, fake, config + PASSWORD, (1, 2)) as (brokers, routes):
        await quiet(brokers)
        await converged(brokers)
        old = served_now(brokers)[1]
        with place.server.admin() as admin:  # the keys stay, the channel goes
            admin.acl_setuser(place.user, enabled=True, reset_channels=True)
        # Both listeners see it in real time, then wait on the broker's clock to retry.
        await logged(caplog, "listening again in", 2)
        await clock.advance(STEP)
        await quiet(brokers)
        new = (await brokers[0].client.post("/token/p/refresh")).json()["access_token"]
        assert any("announcing the new token failed" in r.getMessage() for r in caplog.records)
        assert served_now(brokers) == [new, old]  # B missed it
        sent = len(routes[1].times(IDP, "/oauth/token"))
        place.server.grant(place)
        for _ in range(3):  # the listener's backoff runs on the broker's clock
            await clock.advance(STEP)
            await quiet(brokers)
        await converged(brokers)
        assert served_now(brokers) == [new, new]
        assert len(routes[1].times(IDP, "/oauth/token")) == sent
        assert any("listening again in" in r.getMessage() for r in caplog.records)
