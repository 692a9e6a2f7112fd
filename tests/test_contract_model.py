"""The token contract as a property: random sequences of callers, IdP moods, time and reloads.

A hypothesis state machine drives the refresh engine on the fake clock
against an in-memory OAuth2 server (``httpx.MockTransport``) that rotates and
revokes refresh tokens and can be slow, down, garbage-spewing or refusing.
After every step it checks the promises the README makes:

* a token handed out has at least ``serve_min_remaining`` left and is
  handed out before the ``expires_at`` it states;
* a forced refresh with ``If-Match`` never returns the refused token;
* at most one request is in flight to the identity provider;
* the requests callers trigger never exceed the caller bucket;
* no refresh token is lost: every refresh presents the newest one the
  identity provider issued (unless the test itself killed it).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.config.settings import BrokerSettings
from broker.core.errors import TokenUnavailableError
from broker.core.tokens import Token
from broker.engine.manager import TokenManager
from tests.support import FakeClock, settings_from, settle

LIFETIME = 30
BURST = 3
INTERVAL = 10.0
LATENCY = 0.5

CONFIG = """
request_timeout: 2
refresh:
  backoff_initial: 1
  backoff_max: 60
  caller_burst: {burst}
  caller_interval: {interval}
  serve_min_remaining: {floor}
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: password
    client_id: app
    client_secret: app-secret
    username: alice
    password: alice-password
"""

MOODS = ("ok", "slow", "down", "garbage", "refuse_refresh", "refuse_login")


@functools.cache
def config(*, burst: int = BURST, floor: float = 1.0) -> BrokerSettings:
    """Parsed once per value pair: settings are frozen, and each parse ends in a full
    gc.collect() (broker/config/yamlfile.py), which under hypothesis's many live objects
    took most of this test's time."""
    return settings_from(CONFIG.format(burst=burst, interval=INTERVAL, floor=floor))


@dataclass
class Server:
    """An OAuth2 token endpoint with rotation and revocation, and a mood set by the test."""

    clock: FakeClock
    mood: str = "ok"
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    newest_refresh_token: str | None = None
    killed: set[str] = field(default_factory=set)
    in_flight: int = 0
    most_in_flight: int = 0
    stale_refreshes: list[str] = field(default_factory=list)
    caller_triggered_at: list[float] = field(default_factory=list)
    requests: int = 0
    manager: TokenManager | None = None
    last_fetch: asyncio.Task[Token] | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self._note_caller_triggered()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.mood == "slow":
                await self.clock.sleep(LATENCY)
            return self._answer({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
        finally:
            self.in_flight -= 1

    def _note_caller_triggered(self) -> None:
        """A fetch that a servable token and the plan did not call for came from a caller.

        One fetch may send two requests (a refused refresh, then the login): the fetch
        counts once, by the identity of the manager's task in flight.
        """
        assert self.manager is not None
        provider = self.manager.get("idp")
        now = self.clock.monotonic()
        fetch = provider.inflight
        if fetch is not None and fetch is self.last_fetch:
            return
        self.last_fetch = fetch
        planned = provider.next_refresh_at is not None and provider.next_refresh_at <= now
        if provider.servable(now) and not planned:
            self.caller_triggered_at.append(now)

    def _answer(self, form: dict[str, str]) -> httpx.Response:
        refreshing = form["grant_type"] == "refresh_token"
        if refreshing:
            presented = form["refresh_token"]
            if presented != self.newest_refresh_token and presented not in self.killed:
                self.stale_refreshes.append(presented)
            if presented in self.killed or presented != self.newest_refresh_token:
                return httpx.Response(400, json={"error": "invalid_grant"})
        if self.mood == "down":
            return httpx.Response(503, json={"error": "temporarily_unavailable"})
        if self.mood == "garbage":
            return httpx.Response(200, content=b"<html>maintenance</html>")
        if self.mood == "refuse_refresh" and refreshing:
            assert self.newest_refresh_token is not None
            self.killed.add(self.newest_refresh_token)
            return httpx.Response(400, json={"error": "invalid_grant"})
        if self.mood == "refuse_login" and not refreshing:
            return httpx.Response(401, json={"error": "invalid_client"})
        n = next(self.counter)
        self.newest_refresh_token = f"rt-{n}"  # rotation: every older one is now dead
        body = {"access_token": f"at-{n}", "expires_in": LIFETIME, "refresh_token": f"rt-{n}"}
        return httpx.Response(200, json=body)


@dataclass
class Call:
    kind: str
    rejected: str | None = None
    token: Token | None = None
    error: TokenUnavailableError | None = None
    done_at: float | None = None
    done_at_wall: float | None = None


class TokenContract(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.server = Server(self.clock)
        self.settings = config()
        self.calls: list[Call] = []
        self.checked = 0
        # (caller requests before it, when, the new burst): a reload starts a full bucket.
        self.bucket_resets: list[tuple[int, float, int]] = []
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self.server))
        self.manager = TokenManager(
            self.settings, client=self.client, clock=self.clock, rng=random.Random(3)
        )
        self.server.manager = self.manager
        self.run(self.manager.start())
        self.run(settle())

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def teardown(self) -> None:
        self.run(self.manager.stop(grace=0))
        self.run(self.client.aclose())
        self.loop.close()

    # -- callers --------------------------------------------------------------------------

    def _call(self, call: Call, coro: object) -> None:
        async def wrapped() -> None:
            try:
                call.token = await coro  # type: ignore[misc]
            except TokenUnavailableError as exc:
                call.error = exc
            call.done_at = self.clock.monotonic()
            call.done_at_wall = self.clock.wall()

        self.calls.append(call)
        self.loop.create_task(wrapped())
        self.run(settle())

    @rule()
    def get(self) -> None:
        self._call(Call("get"), self.manager.token("idp"))

    @rule(min_valid=st.sampled_from([1, 5, 20, 29, 40]))
    def get_min_valid(self, min_valid: int) -> None:
        self._call(Call("min_valid"), self.manager.token("idp", min_valid))

    @rule()
    def force_refresh(self) -> None:
        self._call(Call("forced"), self.manager.force_refresh("idp"))

    @rule(stale=st.booleans())
    def force_refresh_if_match(self, stale: bool) -> None:
        """A caller whose API refused the current token (or an older one it still held)."""
        served = [c.token for c in self.calls if c.token is not None]
        current = self.manager.get("idp").token
        refused = served[0] if stale and served else current
        if refused is None:
            return
        self._call(
            Call("if_match", rejected=refused.etag),
            self.manager.force_refresh("idp", rejected=refused.etag),
        )

    # -- the world --------------------------------------------------------------------------

    @rule(mood=st.sampled_from(MOODS))
    def idp_mood(self, mood: str) -> None:
        self.server.mood = mood

    @rule(seconds=st.sampled_from([0.001, 0.3, 1.0, 4.0, 11.0, 25.0, 70.0]))
    def time_passes(self, seconds: float) -> None:
        self.run(self.clock.advance(seconds))

    @rule(left=st.sampled_from([3.5, 1.5, 1.0, 0.999, 0.5]))
    def to_the_end_of_the_token(self, left: float) -> None:
        """Time runs to just before (or into) the current token's last seconds."""
        token = self.manager.get("idp").token
        if token is not None and token.expires_at - left > self.clock.monotonic():
            self.run(self.clock.advance(token.expires_at - left - self.clock.monotonic()))

    @rule(burst=st.sampled_from([1, BURST, 5]), floor=st.sampled_from([1.0, 3.0]))
    def reload(self, burst: int, floor: float) -> None:
        new = config(burst=burst, floor=floor)
        if new.refresh != self.settings.refresh:
            before = len(self.server.caller_triggered_at)
            self.bucket_resets.append((before, self.clock.monotonic(), burst))
        self.settings = new
        self.run(self.manager.update(new))
        self.run(settle())

    @precondition(lambda self: self.server.mood != "ok")
    @rule()
    def idp_recovers(self) -> None:
        self.server.mood = "ok"

    # -- promises ---------------------------------------------------------------------------

    @invariant()
    def answers_keep_the_contract(self) -> None:
        for call in self.calls[self.checked :]:
            if call.done_at is None:
                continue
            token = call.token
            if token is not None:
                assert call.done_at_wall is not None
                assert token.remaining(call.done_at) >= token.serve_min_remaining
                assert token.expires_in(call.done_at) >= 1
                assert call.done_at_wall < token.expires_at_wall
                if call.rejected is not None:
                    assert token.etag != call.rejected, "a refused token was handed back"
        while self.checked < len(self.calls) and self.calls[self.checked].done_at is not None:
            self.checked += 1

    @invariant()
    def one_request_in_flight(self) -> None:
        assert self.server.most_in_flight <= 1

    @invariant()
    def no_refresh_token_lost(self) -> None:
        assert self.server.stale_refreshes == []

    @invariant()
    def caller_requests_stay_within_the_bucket(self) -> None:
        """Replay the caller-triggered requests through an independent bucket model."""
        resets = list(self.bucket_resets)
        level, at, burst = float(BURST), 0.0, BURST
        for index, moment in enumerate(self.server.caller_triggered_at):
            while resets and resets[0][0] <= index:
                _, at, burst = resets.pop(0)
                level = float(burst)
            level = min(float(burst), level + (moment - at) / INTERVAL if index else level)
            at = moment
            level -= 1.0
            assert level >= -1e-9, "callers drove more requests than the bucket allows"


TokenContract.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_token_contract_holds = TokenContract.TestCase
