"""Fault injection: identity providers that fail in every way we know, through the real API.

Each test runs a broker with two providers: ``victim`` in front of a fake that
misbehaves and ``bystander`` in front of a healthy one. For each fault it checks
what callers get, that no expired token is ever served (every token served is
checked against the fake that issued it), that retries back off (the times the
requests reached the fake), and that the bystander is untouched.

The broker, its callers and the fakes run in one event loop on a fake clock
(tests/inprocess.py): time passes only where a test advances it, so a fault that
takes seconds to play out takes milliseconds, and every run takes the same steps.
One smoke test at the end does the same on real sockets in real time, so that a
real refused connection stays covered.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.fakes.base import FakeProvider
from broker.fakes.hiro import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_PASSWORD,
    DEMO_USERNAME,
    FakeHiro,
)
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.inprocess import STEP, IdPs, InProcess, in_process
from tests.support import FakeClock, free_port, running_broker, settings_from, wait_for

pytestmark = pytest.mark.anyio

TTL = 3.0

VICTIM = "http://127.0.0.1:9001"
BYSTANDER = "http://127.0.0.1:9002"
"""The fakes' origins: nothing listens there, IdPs routes by them (loopback, so plain
http:// passes the config's checks)."""
TOKEN_PATH = "/oauth/token"

CONFIG = """
request_timeout: 2
refresh: {{backoff_initial: 0.2, backoff_max: 2, margin: 1}}
providers:
  victim:
    type: oauth2
    token_url: "{victim_url}/oauth/token"
    grant: password
    client_id: app
    client_secret: app-secret
    username: alice
    password: alice-pw
    timeout: 0.5
  bystander:
    type: oauth2
    token_url: "{bystander_url}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret
"""


def oauth2_fake(now: Callable[[], float] = time.time) -> FakeOAuth2:
    """The fake both providers use, on the clock *now* (a FakeClock's ``wall``)."""
    return FakeOAuth2(
        clients={"app": "app-secret"},
        users={"alice": "alice-pw"},
        ttl=TTL,
        revoke_rotated_refresh_tokens=True,
        now=now,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def idps(clock: FakeClock) -> IdPs:
    return IdPs(clock)


Condition = Callable[[], bool | Awaitable[bool]]


@dataclass
class Observer:
    """Fetches tokens and records what callers got; asserts no expired token is served."""

    broker: InProcess
    fakes: dict[str, FakeProvider]
    statuses: dict[str, list[int]] = field(default_factory=dict)

    @property
    def clock(self) -> FakeClock:
        return self.broker.clock

    async def get(self, name: str) -> httpx.Response:
        response = await self.broker.get(f"/token/{name}")
        self.statuses.setdefault(name, []).append(response.status_code)
        if response.status_code == 200:
            token = response.json()["access_token"]
            fake = self.fakes[name]
            assert token in fake.issued_access_tokens
            assert fake.is_access_token_valid(token), f"{name}: served a dead token"
        else:
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) >= 1
        return response

    async def watch(self, seconds: float, until: Condition | None = None) -> None:
        """Poll both providers every STEP for *seconds* of fake time (or until *until*),
        checking every answer."""
        deadline = self.clock.monotonic() + seconds
        while self.clock.monotonic() < deadline:
            for name in self.fakes:
                await self.get(name)
            if until is not None and await holds(until):
                return
            await self.clock.advance(STEP)
        if until is not None:
            pytest.fail(f"condition not met within {seconds} s")

    async def status(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = (await self.broker.get("/providers")).json()
        return body["providers"][name]  # type: ignore[no-any-return]

    async def ready(self) -> bool:
        return (await self.broker.get("/readyz")).status_code == 200

    async def victim_failed(self) -> bool:
        return bool((await self.status("victim"))["failures"])

    def token_times(self, name: str) -> list[float]:
        """When the token requests reached *name*'s fake, in fake seconds."""
        origin = {"victim": VICTIM, "bystander": BYSTANDER}[name]
        times = self.broker.idps.times(origin, TOKEN_PATH)
        assert len(times) == len(self.fakes[name].token_requests())  # one log, seen twice
        return times

    def gaps(self, name: str = "victim") -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.token_times(name))]

    async def bystander_untouched(self) -> None:
        await self.get("bystander")
        assert set(self.statuses["bystander"]) == {200}
        times = self.token_times("bystander")
        first, last = times[0], times[-1]
        # One token per 2/3 lifetime or so: never a burst caused by the victim.
        assert len(times) <= (last - first) / (TTL * 0.5) + 2


async def holds(condition: Condition) -> bool:
    result = condition()
    return await result if inspect.isawaitable(result) else result


@asynccontextmanager
async def scenario(
    idps: IdPs,
    victim: FakeProvider,
    victim_app: ASGIApp | None = None,
    *,
    victim_up: bool = True,
    config: str = CONFIG,
) -> AsyncIterator[Observer]:
    """The broker in front of *victim* (served as *victim_app*, unless it starts down) and
    a healthy bystander, on ``idps.clock``."""
    bystander = oauth2_fake(idps.clock.wall)
    idps.serve(BYSTANDER, bystander.app)
    if victim_up:
        idps.serve(VICTIM, victim_app or victim.app)
    settings = settings_from(config.format(victim_url=VICTIM, bystander_url=BYSTANDER))
    async with in_process(settings, idps) as broker:
        yield Observer(broker, {"victim": victim, "bystander": bystander})


# -- ASGI wrappers that break the transport the way networks do -----------------------


class Slow:
    """Delays token answers by *delay* seconds of *clock* (after the fake handled the request)."""

    def __init__(self, app: ASGIApp, clock: FakeClock, delay: float, times: int) -> None:
        self.app, self.clock, self.delay, self.times = app, clock, delay, times

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/token") or self.times <= 0:
            await self.app(scope, receive, send)
            return
        self.times -= 1
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.app(scope, receive, hold)  # the fake issues (and rotates) for real
        await self.clock.sleep(self.delay)  # ... but the answer comes too late
        for message in held:
            await send(message)


class CutBody:
    """Answers the next *times* token requests with a body cut off mid-way."""

    def __init__(self, app: ASGIApp, times: int) -> None:
        self.app, self.times = app, times

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/token") or self.times <= 0:
            await self.app(scope, receive, send)
            return
        self.times -= 1
        headers = [(b"content-type", b"application/json"), (b"content-length", b"400")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b'{"access_token": "half', "more_body": False}
        )


# -- the faults -----------------------------------------------------------------------


async def test_idp_down_at_start_then_back(clock: FakeClock, idps: IdPs) -> None:
    """Liveness 200, readiness 503 and token 503 + Retry-After; ready by itself when back."""
    victim = oauth2_fake(clock.wall)
    async with scenario(idps, victim, victim_up=False) as watch:
        assert (await watch.broker.get("/healthz")).status_code == 200
        await watch.broker.eventually(watch.victim_failed, within=10)
        response = await watch.get("victim")
        assert response.status_code == 503
        assert response.json()["error"] == "token_unavailable"
        assert "connect_error" in response.json()["message"]
        ready = await watch.broker.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["providers"]["victim"]["error"]["code"] == "connect_error"
        idps.serve(VICTIM, victim.app)
        await watch.broker.eventually(watch.ready, within=10)
        assert (await watch.get("victim")).status_code == 200
        await watch.bystander_untouched()


async def test_idp_down_mid_life_serves_until_expiry_then_503(clock: FakeClock, idps: IdPs) -> None:
    """The current token is served while valid, never after; recovery is automatic."""
    victim = oauth2_fake(clock.wall)
    async with scenario(idps, victim, victim_up=False) as watch:
        idps.serve(VICTIM, victim.app)
        await watch.broker.eventually(watch.ready, within=10)
        assert (await watch.get("victim")).status_code == 200
        idps.stop(VICTIM)  # connection refused from here on
        stopped = clock.monotonic()
        before = len(watch.statuses["victim"])
        await watch.watch(TTL + 3, until=lambda: watch.statuses["victim"][-1] == 503)
        # No later than the token's lifetime (and the poll that noticed): on the fake
        # clock this needs no allowance for a busy machine.
        assert clock.monotonic() - stopped <= TTL + STEP
        assert 200 in watch.statuses["victim"][before:]  # served on while it was valid
        assert not await watch.ready()
        idps.serve(VICTIM, victim.app)
        await watch.broker.eventually(watch.ready, within=10)
        assert (await watch.get("victim")).status_code == 200
        await watch.bystander_untouched()


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (500, {"error": "server_error"}, "server_error"),
        (502, b"<html><h1>502 Bad Gateway</h1></html>", "http_502"),
        (200, b"<html>maintenance</html>", "invalid_response"),
        (200, b'{"access_token": ', "invalid_response"),
        (200, {"token_type": "Bearer", "expires_in": 60}, "invalid_response"),
        (200, b"", "invalid_response"),
        (200, b"x" * (300 * 1024), "response_too_large"),
    ],
    ids=["500", "html-502", "html-200", "invalid-json", "no-access-token", "empty", "huge"],
)
async def test_garbage_and_errors_are_transient(
    clock: FakeClock, idps: IdPs, status: int, body: object, code: str
) -> None:
    """The good token keeps being served, flagged; retries back off; the next good answer wins."""
    victim = oauth2_fake(clock.wall)
    async with scenario(idps, victim) as watch:
        first = (await watch.get("victim")).json()["access_token"]
        victim.fail_next(4, status, body)  # type: ignore[arg-type]  # the table's bodies
        await watch.watch(10, until=lambda: len(victim.token_requests()) >= 6)
        errors = await watch.status("victim")
        assert errors["failures"] == 4
        assert errors["last_error"]["code"] == code
        assert (await watch.get("victim")).json()["access_token"] != first
        # Four failures in a row, each retry later than the last on average.
        retry_gaps = watch.gaps()[1:5]
        assert sum(retry_gaps) > 0.2
        await watch.bystander_untouched()


async def test_failing_refresh_is_flagged_to_callers(clock: FakeClock, idps: IdPs) -> None:
    """While the last refresh failed, token answers carry X-Broker-Refresh-Failed."""
    victim = oauth2_fake(clock.wall)
    async with scenario(idps, victim) as watch:
        await watch.get("victim")
        victim.fail_next(1000, 500, {"error": "server_error"})
        await watch.broker.eventually(watch.victim_failed, within=10)
        response = await watch.broker.get("/token/victim")
        assert response.status_code == 200
        assert response.headers["x-broker-refresh-failed"] == "server_error"
        states = (await watch.broker.get("/readyz")).json()["providers"]
        assert states["victim"]["state"] == "degraded"
        assert states["bystander"]["state"] == "ready"


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(clock: FakeClock, idps: IdPs, status: int) -> None:
    """A 429/503 with Retry-After: 2 keeps the broker away for 2 s."""
    victim = oauth2_fake(clock.wall)
    async with scenario(idps, victim) as watch:
        await watch.get("victim")
        victim.fail_next(1, status, {"error": "temporarily_unavailable"}, {"Retry-After": "2"})
        await watch.watch(10, until=lambda: len(victim.token_requests()) >= 3)
        assert watch.gaps()[1] >= 2.0  # fake time: not a moment less
        await watch.bystander_untouched()


async def test_slow_idp_times_out_and_the_token_survives(clock: FakeClock, idps: IdPs) -> None:
    """An answer slower than the timeout is a transient failure, not a hang."""
    victim = oauth2_fake(clock.wall)
    async with scenario(idps, victim, Slow(victim.app, clock, delay=1.5, times=2)) as watch:
        await watch.watch(10, until=watch.ready)
        status = await watch.status("victim")
        assert status["last_error"]["code"] == "timeout"
        assert (await watch.get("victim")).status_code == 200
        await watch.bystander_untouched()


async def test_connection_cut_mid_body(clock: FakeClock, idps: IdPs) -> None:
    """A body cut off mid-way is a network error; the next attempt succeeds."""
    victim = oauth2_fake(clock.wall)
    async with scenario(idps, victim, CutBody(victim.app, times=1)) as watch:
        await watch.watch(10, until=watch.ready)
        status = await watch.status("victim")
        assert status["last_error"]["code"] == "network_error"
        assert status["failures"] == 1
        await watch.bystander_untouched()


async def test_lost_rotation_answer_then_reused_refresh_token_falls_back_to_login(
    clock: FakeClock, idps: IdPs
) -> None:
    """The IdP rotated but its answer never arrived; the old refresh token is refused; log in."""
    victim = oauth2_fake(clock.wall)
    slow = Slow(victim.app, clock, delay=1.5, times=0)
    async with scenario(idps, victim, slow) as watch:
        await watch.get("victim")
        slow.times = 1  # the next token request (the refresh) is answered too late
        await watch.watch(15, until=lambda: len(victim.token_requests("password")) >= 2)
        refreshes = [
            (r.form or {}).get("refresh_token") for r in victim.token_requests("refresh_token")
        ]
        assert refreshes[0] == refreshes[1], "the broker retried with the refresh token it had"
        assert refreshes[0] is not None
        assert not victim.is_refresh_token_valid(refreshes[0])
        assert (await watch.get("victim")).status_code == 200
        await watch.bystander_untouched()


async def test_revoked_seeded_refresh_token_means_needs_login(clock: FakeClock, idps: IdPs) -> None:
    """With only a refresh token, a refused one gives 503 needs_login and IdP silence."""
    victim = oauth2_fake(clock.wall)
    seed = victim.seed_refresh_token("alice", client_id="app")
    config = CONFIG.replace(
        "    grant: password\n    client_id: app\n    client_secret: app-secret\n"
        "    username: alice\n    password: alice-pw\n",
        f"    grant: refresh_token\n    client_id: app\n    client_secret: app-secret\n"
        f"    refresh_token: {seed}\n",
        1,
    )
    victim.revoke_refresh_token(seed)
    async with scenario(idps, victim, config=config) as watch:
        broker = watch.broker

        async def refused() -> bool:
            return (await broker.get("/token/victim")).status_code == 503

        await broker.eventually(refused, within=10)
        response = await broker.get("/token/victim")
        assert response.json()["error"] == "needs_login"
        readyz = (await broker.get("/readyz")).json()
        assert readyz["providers"]["victim"]["state"] == "needs_login"
        calls = len(victim.token_requests())
        assert (await broker.get("/token/bystander")).status_code == 200
        await clock.advance(TTL * 10)  # silence is for good, not for a moment
        assert (await broker.get("/token/victim")).json()["error"] == "needs_login"
        assert len(victim.token_requests()) == calls == 1


@pytest.mark.parametrize("skew", [600.0, -600.0])
async def test_clock_skew_of_ten_minutes(clock: FakeClock, idps: IdPs, skew: float) -> None:
    """HIRO's absolute expires-at is read on the provider's clock, measured from Date."""
    victim = FakeHiro(ttl=TTL, now=lambda: clock.wall() + skew)
    config = CONFIG.replace(
        'type: oauth2\n    token_url: "{victim_url}/oauth/token"\n    grant: password\n'
        "    client_id: app\n    client_secret: app-secret\n    username: alice\n"
        "    password: alice-pw\n",
        f'type: hiro\n    url: "{{victim_url}}"\n    client_id: {DEMO_CLIENT_ID}\n'
        f"    client_secret: {DEMO_CLIENT_SECRET}\n    username: {DEMO_USERNAME}\n"
        f"    password: {DEMO_PASSWORD}\n",
        1,
    )
    async with scenario(idps, victim, config=config) as watch:
        await watch.watch(TTL * 2)
        assert set(watch.statuses["victim"]) == {200}
        status = await watch.status("victim")
        # Date has whole seconds: the measured skew is up to 1 s short of the real one.
        assert status["clock_skew"] == pytest.approx(skew, abs=1)
        assert status["expires_in"] <= TTL
        assert len(victim.token_requests("refresh_token")) >= 2


# -- on real sockets, in real time ------------------------------------------------------------


@pytest.mark.smoke
def test_real_socket_idp_down_at_start_then_back() -> None:
    """As test_idp_down_at_start_then_back, on real sockets: a refused TCP connection is
    connect_error, and the broker recovers by itself once the port answers."""
    victim, bystander = oauth2_fake(), oauth2_fake()
    port = free_port()
    with serve_in_thread(bystander.app) as bystander_url:
        config = CONFIG.format(victim_url=f"http://127.0.0.1:{port}", bystander_url=bystander_url)
        with running_broker(settings_from(config)) as client:

            def providers() -> dict[str, Any]:
                body: dict[str, Any] = client.get("/providers").json()
                return body["providers"]  # type: ignore[no-any-return]

            assert client.get("/healthz").status_code == 200
            wait_for(lambda: providers()["victim"]["failures"])
            response = client.get("/token/victim")
            assert response.status_code == 503
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"] == "token_unavailable"
            assert "connect_error" in response.json()["message"]
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["providers"]["victim"]["error"]["code"] == "connect_error"
            with serve_in_thread(victim.app, port=port):
                wait_for(lambda: client.get("/readyz").status_code == 200, timeout=10)
                token = client.get("/token/victim").json()["access_token"]
                assert token in victim.issued_access_tokens
                assert victim.is_access_token_valid(token)
            token = client.get("/token/bystander").json()["access_token"]
            assert bystander.is_access_token_valid(token)
