"""Fault injection: identity providers that fail in every way we know, through the real API.

Each test runs a broker with two providers: ``victim`` in front of a fake that
misbehaves and ``bystander`` in front of a healthy one. For each fault it checks
what callers get, that no expired token is ever served (every token served is
checked against the fake that issued it), that retries back off (the fake's
request log over time), and that the bystander is untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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
from tests.support import free_port, running_broker, settings_from, wait_for

TTL = 3.0

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


def oauth2_fake() -> FakeOAuth2:
    return FakeOAuth2(
        clients={"app": "app-secret"},
        users={"alice": "alice-pw"},
        ttl=TTL,
        revoke_rotated_refresh_tokens=True,
    )


@dataclass
class Observer:
    """Fetches tokens and records what callers got; asserts no expired token is served."""

    client: httpx.Client
    fakes: dict[str, FakeProvider]
    statuses: dict[str, list[int]] = field(default_factory=dict)

    def get(self, name: str) -> httpx.Response:
        response = self.client.get(f"/token/{name}")
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

    def watch(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Poll both providers for *seconds* (or until *until*), checking every answer."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name in self.fakes:
                self.get(name)
            if until is not None and until():
                return
            time.sleep(0.05)
        if until is not None:
            pytest.fail(f"condition not met within {seconds} s")

    def bystander_untouched(self) -> None:
        self.get("bystander")
        assert set(self.statuses["bystander"]) == {200}
        requests = self.fakes["bystander"].token_requests()
        first, last = requests[0].at, requests[-1].at
        # One token per 2/3 lifetime or so: never a burst caused by the victim.
        assert len(requests) <= (last - first) / (TTL * 0.5) + 2


@contextmanager
def scenario(
    victim: FakeProvider,
    victim_app: ASGIApp | None = None,
    *,
    victim_url: str | None = None,
) -> Iterator[Observer]:
    bystander = oauth2_fake()
    with (
        serve_in_thread(bystander.app) as bystander_url,
        _maybe_serve(victim_app or victim.app, victim_url) as url,
    ):
        settings = settings_from(CONFIG.format(victim_url=url, bystander_url=bystander_url))
        with running_broker(settings) as client:
            yield Observer(client, {"victim": victim, "bystander": bystander})


@contextmanager
def _maybe_serve(app: ASGIApp, fixed_url: str | None) -> Iterator[str]:
    if fixed_url is not None:
        yield fixed_url
        return
    with serve_in_thread(app) as url:
        yield url


def gaps(fake: FakeProvider) -> list[float]:
    times = [r.at for r in fake.token_requests()]
    return [b - a for a, b in itertools.pairwise(times)]


# -- ASGI wrappers that break the transport the way networks do -----------------------


class Slow:
    """Delays token answers by *delay* seconds (after the fake has handled the request)."""

    def __init__(self, app: ASGIApp, delay: float, times: int) -> None:
        self.app, self.delay, self.times = app, delay, times

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/token") or self.times <= 0:
            await self.app(scope, receive, send)
            return
        self.times -= 1
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.app(scope, receive, hold)  # the fake issues (and rotates) for real
        await asyncio.sleep(self.delay)  # ... but the answer comes too late
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


def test_idp_down_at_start_then_back() -> None:
    """Liveness 200, readiness 503 and token 503 + Retry-After; ready by itself when back."""
    victim = oauth2_fake()
    port = free_port()
    with scenario(victim, victim_url=f"http://127.0.0.1:{port}") as watch:
        assert watch.client.get("/healthz").status_code == 200
        wait_for(lambda: watch.client.get("/providers").json()["providers"]["victim"]["failures"])
        response = watch.get("victim")
        assert response.status_code == 503
        assert response.json()["error"] == "token_unavailable"
        assert "connect_error" in response.json()["message"]
        ready = watch.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["providers"]["victim"]["error"]["code"] == "connect_error"
        with serve_in_thread(victim.app, port=port):
            wait_for(lambda: watch.client.get("/readyz").status_code == 200, timeout=10)
            assert watch.get("victim").status_code == 200
        watch.bystander_untouched()


def test_idp_down_mid_life_serves_until_expiry_then_503() -> None:
    """The current token is served while valid, never after; recovery is automatic."""
    victim = oauth2_fake()
    port = free_port()
    with scenario(victim, victim_url=f"http://127.0.0.1:{port}") as watch:
        with serve_in_thread(victim.app, port=port):
            wait_for(lambda: watch.client.get("/readyz").status_code == 200, timeout=10)
            assert watch.get("victim").status_code == 200
        stopped = time.monotonic()  # connection refused from here on
        watch.watch(TTL + 3, until=lambda: watch.statuses["victim"][-1] == 503)
        assert time.monotonic() - stopped < TTL + 3  # generous: CI machines are shared
        assert 200 in watch.statuses["victim"]
        assert watch.client.get("/readyz").status_code == 503
        with serve_in_thread(victim.app, port=port):
            wait_for(lambda: watch.client.get("/readyz").status_code == 200, timeout=10)
            assert watch.get("victim").status_code == 200
        watch.bystander_untouched()


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
def test_garbage_and_errors_are_transient(status: int, body: object, code: str) -> None:
    """The good token keeps being served, flagged; retries back off; the next good answer wins."""
    victim = oauth2_fake()
    with scenario(victim) as watch:
        first = watch.get("victim").json()["access_token"]
        victim.fail_next(4, status, body)  # type: ignore[arg-type]  # the table's bodies
        watch.watch(10, until=lambda: len(victim.token_requests()) >= 6)
        errors = watch.client.get("/providers").json()["providers"]["victim"]
        assert errors["failures"] == 4
        assert errors["last_error"]["code"] == code
        assert watch.get("victim").json()["access_token"] != first
        # Four failures in a row, each retry later than the last on average.
        retry_gaps = gaps(victim)[1:5]
        assert sum(retry_gaps) > 0.2
        watch.bystander_untouched()


def test_failing_refresh_is_flagged_to_callers() -> None:
    """While the last refresh failed, token answers carry X-Broker-Refresh-Failed."""
    victim = oauth2_fake()
    with scenario(victim) as watch:
        watch.get("victim")
        victim.fail_next(1000, 500, {"error": "server_error"})
        wait_for(lambda: watch.client.get("/providers").json()["providers"]["victim"]["failures"])
        response = watch.client.get("/token/victim")
        assert response.status_code == 200
        assert response.headers["x-broker-refresh-failed"] == "server_error"
        states = watch.client.get("/readyz").json()["providers"]
        assert states["victim"]["state"] == "degraded"
        assert states["bystander"]["state"] == "ready"


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(status: int) -> None:
    """A 429/503 with Retry-After: 2 keeps the broker away for 2 s."""
    victim = oauth2_fake()
    with scenario(victim) as watch:
        watch.get("victim")
        victim.fail_next(1, status, {"error": "temporarily_unavailable"}, {"Retry-After": "2"})
        watch.watch(10, until=lambda: len(victim.token_requests()) >= 3)
        assert gaps(victim)[1] >= 1.9
        watch.bystander_untouched()


def test_slow_idp_times_out_and_the_token_survives() -> None:
    """An answer slower than the timeout is a transient failure, not a hang."""
    victim = oauth2_fake()
    with scenario(victim, Slow(victim.app, delay=1.5, times=2)) as watch:
        watch.watch(10, until=lambda: watch.client.get("/readyz").status_code == 200)
        status = watch.client.get("/providers").json()["providers"]["victim"]
        assert status["last_error"]["code"] == "timeout"
        assert watch.get("victim").status_code == 200
        watch.bystander_untouched()


def test_connection_cut_mid_body() -> None:
    """A body cut off mid-way is a network error; the next attempt succeeds."""
    victim = oauth2_fake()
    with scenario(victim, CutBody(victim.app, times=1)) as watch:
        watch.watch(10, until=lambda: watch.client.get("/readyz").status_code == 200)
        status = watch.client.get("/providers").json()["providers"]["victim"]
        assert status["last_error"]["code"] == "network_error"
        assert status["failures"] == 1
        watch.bystander_untouched()


def test_lost_rotation_answer_then_reused_refresh_token_falls_back_to_login() -> None:
    """The IdP rotated but its answer never arrived; the old refresh token is refused; log in."""
    victim = oauth2_fake()
    slow = Slow(victim.app, delay=1.5, times=0)
    with scenario(victim, slow) as watch:
        watch.get("victim")
        slow.times = 1  # the next token request (the refresh) is answered too late
        watch.watch(15, until=lambda: len(victim.token_requests("password")) >= 2)
        refreshes = [
            (r.form or {}).get("refresh_token") for r in victim.token_requests("refresh_token")
        ]
        assert refreshes[0] == refreshes[1], "the broker retried with the refresh token it had"
        assert refreshes[0] is not None
        assert not victim.is_refresh_token_valid(refreshes[0])
        assert watch.get("victim").status_code == 200
        watch.bystander_untouched()


def test_revoked_seeded_refresh_token_means_needs_login() -> None:
    """With only a refresh token, a refused one gives 503 needs_login and IdP silence."""
    victim = oauth2_fake()
    seed = victim.seed_refresh_token("alice", client_id="app")
    config = CONFIG.replace(
        "    grant: password\n    client_id: app\n    client_secret: app-secret\n"
        "    username: alice\n    password: alice-pw\n",
        f"    grant: refresh_token\n    client_id: app\n    client_secret: app-secret\n"
        f"    refresh_token: {seed}\n",
        1,
    )
    bystander = oauth2_fake()
    with serve_in_thread(victim.app) as url, serve_in_thread(bystander.app) as b_url:
        settings = settings_from(config.format(victim_url=url, bystander_url=b_url))
        victim.revoke_refresh_token(seed)
        with running_broker(settings) as client:
            wait_for(lambda: client.get("/token/victim").status_code == 503)
            response = client.get("/token/victim")
            assert response.json()["error"] == "needs_login"
            assert client.get("/readyz").json()["providers"]["victim"]["state"] == "needs_login"
            calls = len(victim.token_requests())
            wait_for(lambda: client.get("/token/bystander").status_code == 200)
            assert len(victim.token_requests()) == calls == 1


@pytest.mark.parametrize("skew", [600.0, -600.0])
def test_clock_skew_of_ten_minutes(skew: float) -> None:
    """HIRO's absolute expires-at is read on the provider's clock, measured from Date."""
    victim = FakeHiro(ttl=TTL, now=lambda: time.time() + skew)
    config = CONFIG.replace(
        'type: oauth2\n    token_url: "{victim_url}/oauth/token"\n    grant: password\n'
        "    client_id: app\n    client_secret: app-secret\n    username: alice\n"
        "    password: alice-pw\n",
        f'type: hiro\n    url: "{{victim_url}}"\n    client_id: {DEMO_CLIENT_ID}\n'
        f"    client_secret: {DEMO_CLIENT_SECRET}\n    username: {DEMO_USERNAME}\n"
        f"    password: {DEMO_PASSWORD}\n",
        1,
    )
    bystander = oauth2_fake()
    with serve_in_thread(victim.app) as url, serve_in_thread(bystander.app) as b_url:
        settings = settings_from(config.format(victim_url=url, bystander_url=b_url))
        with running_broker(settings) as client:
            watch = Observer(client, {"victim": victim, "bystander": bystander})
            watch.watch(TTL * 2)
            assert set(watch.statuses["victim"]) == {200}
            status = client.get("/providers").json()["providers"]["victim"]
            assert status["clock_skew"] == pytest.approx(skew, abs=2)
            assert status["expires_in"] <= TTL
            assert len(victim.token_requests("refresh_token")) >= 2
