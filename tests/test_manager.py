"""The refresh machinery, driven by a fake clock and an in-memory identity provider."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import random
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import parse_qs

import httpx
import pytest

from broker.core.errors import TokenUnavailableError
from broker.core.tokens import Token
from broker.engine.manager import TokenManager
from broker.engine.store import LocalStore, Replacing, Stored, StoreStatus
from tests.support import FakeClock, settings_from, settle

pytestmark = pytest.mark.anyio

PASSWORD_PROVIDER = """
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


class IdP:
    """An OAuth2 token endpoint in memory: records every form, answers from a script or mints."""

    def __init__(self, expires_in: int = 300, rotate: bool = True) -> None:
        self.expires_in = expires_in
        self.rotate = rotate
        self.forms: list[dict[str, str]] = []
        self.script: list[httpx.Response] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.forms.append(form)
        if self.gate is not None:
            await self.gate.wait()
        if self.script:
            return self.script.pop(0)
        n = len(self.forms)
        body: dict[str, object] = {
            "access_token": f"tok-{n}",
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if self.rotate or form.get("grant_type") != "refresh_token":
            body["refresh_token"] = f"rt-{n}"
        return httpx.Response(200, json=body)

    def grants(self) -> list[str]:
        return [form["grant_type"] for form in self.forms]


def error(
    status: int, code: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = json.dumps({"error": code}).encode() if code else b"oops"
    return httpx.Response(status, content=body, headers=headers)


@asynccontextmanager
async def managed(
    idp: Callable[[httpx.Request], object],
    yaml_text: str = PASSWORD_PROVIDER,
    clock: FakeClock | None = None,
) -> AsyncIterator[tuple[TokenManager, FakeClock]]:
    clock = clock or FakeClock()
    transport = httpx.MockTransport(idp)  # type: ignore[arg-type]  # async handlers are supported
    async with httpx.AsyncClient(transport=transport) as client:
        manager = TokenManager(
            settings_from(yaml_text), client=client, clock=clock, rng=random.Random(7)
        )
        await manager.start()
        await settle()
        try:
            yield manager, clock
        finally:
            await manager.stop()


async def test_first_token_is_fetched_at_start_and_served_from_memory() -> None:
    """Start-up logs in once; reads after that never reach the identity provider."""
    idp = IdP()
    async with managed(idp) as (manager, _):
        assert idp.grants() == ["password"]
        for _ in range(100):
            token = manager.current("idp")
            assert token is not None
            assert token.access_token == "tok-1"
        assert len(idp.forms) == 1


async def test_refresh_happens_between_57_and_77_percent_of_the_lifetime() -> None:
    """Default policy: 2/3 of the lifetime ± 10 %, using the refresh token."""
    idp = IdP(expires_in=300)
    async with managed(idp) as (manager, clock):
        await clock.advance(169)
        assert len(idp.forms) == 1
        await clock.advance(62)  # t = 231 s
        assert idp.grants() == ["password", "refresh_token"]
        assert idp.forms[1]["refresh_token"] == "rt-1"
        token = manager.current("idp")
        assert token is not None
        assert token.access_token == "tok-2"


async def test_rotated_refresh_tokens_are_followed() -> None:
    """Each refresh uses the refresh token of the previous answer."""
    idp = IdP(expires_in=30)
    async with managed(idp) as (_, clock):
        for _ in range(4):
            await clock.advance(30)
        used = [form.get("refresh_token") for form in idp.forms[1:]]
        assert [f"rt-{n}" for n in range(1, len(idp.forms))] == used
        assert len(idp.forms) >= 5


class CountingStore:
    """A TokenStore of the test's own that counts its loads; *shared* as told (a store of
    this broker's only, or one that other brokers write to as well)."""

    durable = False

    def __init__(self, *, shared: bool) -> None:
        self.shared = shared
        self.loads = 0
        self._inner = LocalStore()

    async def load(self, provider: str, login: str) -> Stored:
        self.loads += 1
        return await self._inner.load(provider, login)

    async def save_refresh_token(
        self, provider: str, login: str, refresh_token: str, *, replacing: Replacing | None = None
    ) -> None:
        await self._inner.save_refresh_token(provider, login, refresh_token, replacing=replacing)

    async def forget(self, provider: str) -> None:
        await self._inner.forget(provider)

    async def publish(self, provider: str, login: str, token: Token) -> None:
        await self._inner.publish(provider, login, token)

    def lease(self, provider: str) -> AbstractAsyncContextManager[None]:
        return self._inner.lease(provider)

    def announcements(self) -> AsyncGenerator[str, None]:
        return self._inner.announcements()  # none: the loads counted are the requests'

    def status(self) -> StoreStatus:
        return self._inner.status()


@pytest.mark.parametrize("shared", [False, True], ids=["own-store", "shared-store"])
async def test_a_shared_store_is_read_before_every_token_request_an_own_one_once(
    shared: bool,
) -> None:
    """Another broker may have rotated the refresh token in a shared store since the last
    request; a store only this broker writes to cannot have changed (no read per refresh)."""
    idp = IdP(expires_in=30)
    store = CountingStore(shared=shared)
    clock = FakeClock()
    transport = httpx.MockTransport(idp)
    async with httpx.AsyncClient(transport=transport) as client:
        manager = TokenManager(
            settings_from(PASSWORD_PROVIDER), client=client, clock=clock, store=store
        )
        await manager.start()
        try:
            for _ in range(4):
                await clock.advance(30)
        finally:
            await manager.stop()
    assert len(idp.forms) >= 5
    assert store.loads == (len(idp.forms) if shared else 1)


async def test_refresh_token_kept_when_the_answer_omits_one() -> None:
    """Hub does not rotate: the old refresh token stays in use."""
    idp = IdP(expires_in=30, rotate=False)
    async with managed(idp) as (_, clock):
        for _ in range(3):
            await clock.advance(30)
        assert ["rt-1"] * (len(idp.forms) - 1) == [f["refresh_token"] for f in idp.forms[1:]]


async def test_rejected_refresh_token_falls_back_to_password_login() -> None:
    """invalid_grant on refresh → a full login in the same attempt; no outage."""
    idp = IdP(expires_in=30)
    async with managed(idp) as (manager, clock):
        idp.script.append(error(400, "invalid_grant"))
        await clock.advance(25)
        assert idp.grants() == ["password", "refresh_token", "password"]
        token = manager.current("idp")
        assert token is not None
        assert token.access_token == "tok-3"
        assert manager.get("idp").state(clock.monotonic()) == "ready"


async def test_seeded_refresh_token_rejected_means_needs_login_and_silence() -> None:
    """A provider living on a refresh token alone stops calling the IdP once it is dead."""
    seeded = """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: refresh_token
    client_id: app
    client_secret: app-secret
    refresh_token: seed-rt
"""
    idp = IdP(expires_in=30)
    async with managed(idp, seeded) as (manager, clock):
        assert idp.forms[0]["refresh_token"] == "seed-rt"
        idp.script.append(error(400, "invalid_grant"))
        await clock.advance(30)
        calls = len(idp.forms)
        await clock.advance(3600)
        assert calls == len(idp.forms)
        assert manager.get("idp").state(clock.monotonic()) == "needs_login"
        with pytest.raises(TokenUnavailableError) as caught:
            await manager.token("idp")
        assert caught.value.code == "needs_login"


async def test_expired_token_is_never_served() -> None:
    """With the IdP down, the old token is served until it expires and not a moment after."""
    idp = IdP(expires_in=30)
    async with managed(idp) as (manager, clock):
        idp.script.extend(error(503) for _ in range(100))
        # Served while at least serve_min_remaining (1 s) is left, not a moment after.
        await clock.advance(28.999)
        assert manager.current("idp") is not None
        assert manager.get("idp").state(clock.monotonic()) == "degraded"
        await clock.advance(0.002)
        assert manager.current("idp") is None
        with pytest.raises(TokenUnavailableError) as caught:
            await manager.token("idp")
        assert caught.value.retry_after > 0
        assert manager.get("idp").state(clock.monotonic()) == "failing"


async def test_failures_back_off_exponentially() -> None:
    """An IdP that answers 503 forever sees about a dozen attempts in 1000 s, not hundreds."""
    idp = IdP()
    idp.script.extend(error(503) for _ in range(1000))
    async with managed(idp) as (manager, clock):
        times = []
        for _ in range(1000):
            before = len(idp.forms)
            await clock.advance(1)
            if len(idp.forms) > before:
                times.append(clock.monotonic())
        # Full jitter: about 9 tries while the step grows to 300 s, then ~1 per 150 s.
        assert 10 <= len(idp.forms) <= 25
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert sum(gaps[-5:]) / 5 > 60
        assert manager.get("idp").consecutive_failures == len(idp.forms)


async def test_retry_after_is_honoured() -> None:
    """A 429 with Retry-After: 120 keeps the broker away for 120 s."""
    idp = IdP()
    idp.script.append(error(429, headers={"Retry-After": "120"}))
    async with managed(idp) as (manager, clock):
        await clock.advance(119)
        assert len(idp.forms) == 1
        await clock.advance(2)
        assert len(idp.forms) == 2
        assert manager.current("idp") is not None


async def test_concurrent_cold_requests_share_one_token_request() -> None:
    """200 callers during the first login cause exactly one request to the IdP."""
    idp = IdP()
    idp.gate = asyncio.Event()
    async with managed(idp) as (manager, _):
        waiters = [asyncio.ensure_future(manager.token("idp")) for _ in range(200)]
        await settle()
        idp.gate.set()
        tokens = await asyncio.gather(*waiters)
        assert {"tok-1"} == {t.access_token for t in tokens}
        assert len(idp.forms) == 1


async def test_min_valid_forces_one_refresh_for_many_callers() -> None:
    """Callers needing more validity than is left share a single refresh."""
    idp = IdP(expires_in=300)
    async with managed(idp) as (manager, clock):
        await clock.advance(10)
        idp.gate = asyncio.Event()
        waiters = [asyncio.ensure_future(manager.token("idp", min_valid=295)) for _ in range(200)]
        await settle()
        idp.gate.set()
        tokens = await asyncio.gather(*waiters)
        assert {"tok-2"} == {t.access_token for t in tokens}
        assert idp.grants() == ["password", "refresh_token"]


async def test_min_valid_longer_than_any_token_is_refused_without_asking() -> None:
    """Tokens that live 300 s can never satisfy min_valid=400: no IdP call, clear error."""
    idp = IdP(expires_in=300)
    async with managed(idp) as (manager, _):
        with pytest.raises(TokenUnavailableError) as caught:
            await manager.token("idp", min_valid=400)
        assert caught.value.code == "min_valid_unsatisfiable"
        assert len(idp.forms) == 1


async def test_forced_refresh_with_if_match_causes_one_request_for_a_crowd() -> None:
    """Fifty callers whose API refused tok-1 share one refresh; later ones get tok-2 at once."""
    idp = IdP(expires_in=300)
    async with managed(idp) as (manager, clock):
        refused = manager.current("idp")
        assert refused is not None
        await clock.advance(0.2)  # right after the first token: no cooldown applies any more
        idp.gate = asyncio.Event()
        crowd = asyncio.gather(
            *(manager.force_refresh("idp", rejected=refused.etag) for _ in range(50))
        )
        await settle()
        idp.gate.set()
        answers = await crowd
        assert {"tok-2"} == {t.access_token for t in answers}
        late = await manager.force_refresh("idp", rejected=refused.etag)
        assert late.access_token == "tok-2"
        assert idp.grants() == ["password", "refresh_token"]


async def test_if_match_accepts_the_tag_with_or_without_quotes() -> None:
    """The ETag as sent ("..."), bare, weak or in a list all name the token."""
    idp = IdP(expires_in=300)
    async with managed(idp) as (manager, _):
        token = manager.current("idp")
        assert token is not None
        forms: list[Callable[[str], str]] = [
            lambda tag: tag,
            lambda tag: tag.strip('"'),
            lambda tag: f"W/{tag}",
            lambda tag: f'"other", {tag}',
        ]
        for form in forms:
            fresh = await manager.force_refresh("idp", rejected=form(token.etag))
            assert fresh.etag != token.etag
            token = fresh
        assert len(idp.forms) == 5


async def test_forced_refresh_without_if_match_always_asks_the_idp() -> None:
    """No If-Match: a new token each time, even right after the start-up login."""
    idp = IdP(expires_in=300)
    async with managed(idp) as (manager, _):
        first = await manager.force_refresh("idp")
        second = await manager.force_refresh("idp")
        assert [first.access_token, second.access_token] == ["tok-2", "tok-3"]


async def test_the_idp_reissuing_the_refused_token_is_not_an_answer() -> None:
    """A server that hands out the same token again cannot satisfy If-Match: 503, not a 200."""
    idp = IdP(expires_in=300)
    async with managed(idp) as (manager, _):
        refused = manager.current("idp")
        assert refused is not None
        idp.script.append(httpx.Response(200, json={"access_token": "tok-1", "expires_in": 300}))
        with pytest.raises(TokenUnavailableError) as caught:
            await manager.force_refresh("idp", rejected=refused.etag)
        assert caught.value.status == 503


CALLER_LIMIT = PASSWORD_PROVIDER.replace(
    "providers:", "refresh: {caller_burst: 3, caller_interval: 10}\nproviders:"
)


async def test_caller_triggered_fetches_are_rate_limited_per_provider() -> None:
    """A burst of 3, then one per 10 s; the 429 says when; planned refreshes still run."""
    idp = IdP(expires_in=300)
    async with managed(idp, CALLER_LIMIT) as (manager, clock):
        for _ in range(3):
            await manager.force_refresh("idp")
        with pytest.raises(TokenUnavailableError) as caught:
            await manager.force_refresh("idp")
        assert (caught.value.status, caught.value.code) == (429, "refresh_rate_limited")
        assert caught.value.retry_after == pytest.approx(10)
        await clock.advance(1)
        with pytest.raises(TokenUnavailableError) as caught:
            await manager.token("idp", min_valid=299.5)  # min_valid draws from the same bucket
        assert caught.value.status == 429
        assert len(idp.forms) == 4
        await clock.advance(9)
        await manager.token("idp", min_valid=299.5)
        assert len(idp.forms) == 5
        await clock.advance(250)  # the planned refresh is not limited by the bucket
        assert idp.grants()[-1] == "refresh_token"
        assert len(idp.forms) == 6


async def test_superseded_if_match_and_joins_never_use_the_bucket() -> None:
    """Answering with a newer token, or joining a fetch in flight, costs nothing."""
    idp = IdP(expires_in=300)
    async with managed(idp, CALLER_LIMIT.replace("caller_burst: 3", "caller_burst: 1")) as (
        manager,
        _,
    ):
        refused = manager.current("idp")
        assert refused is not None
        idp.gate = asyncio.Event()
        joined = asyncio.gather(*(manager.force_refresh("idp") for _ in range(5)))
        await settle()
        idp.gate.set()
        assert {t.access_token for t in await joined} == {"tok-2"}
        for _ in range(5):
            assert (await manager.force_refresh("idp", rejected=refused.etag)).access_token == (
                "tok-2"
            )
        assert len(idp.forms) == 2


async def test_forced_refresh_in_backoff_answers_with_the_valid_token() -> None:
    """While a retry is not due, a forced refresh gets the current token, unless it was refused."""
    idp = IdP(expires_in=300)
    async with managed(idp) as (manager, _):
        current = manager.current("idp")
        assert current is not None
        idp.script.append(error(503))
        with pytest.raises(TokenUnavailableError):
            await manager.force_refresh("idp", rejected=current.etag)  # failed, refused token
        again = await manager.force_refresh("idp")  # in backoff now: the valid token
        assert again is current
        with pytest.raises(TokenUnavailableError) as caught:
            await manager.force_refresh("idp", rejected=current.etag)
        assert caught.value.status == 503
        assert caught.value.retry_after > 0
        assert len(idp.forms) == 2


@pytest.mark.parametrize(
    ("answer", "state"),
    [
        pytest.param(error(401, "invalid_client"), "rejected", id="refused-credentials"),
        pytest.param(error(404), "misconfigured", id="no-token-endpoint"),
        pytest.param(
            httpx.Response(301, headers={"Location": "https://idp.test/login"}),
            "misconfigured",
            id="redirect",
        ),
    ],
)
async def test_refused_or_misconfigured_retry_only_every_backoff_max(
    answer: httpx.Response, state: str
) -> None:
    """Retrying soon cannot fix refused credentials or a wrong URL: one attempt per 300 s."""
    idp = IdP(expires_in=30)
    idp.script.extend([answer] * 5)
    async with managed(idp) as (manager, clock):
        assert len(idp.forms) == 1
        assert manager.get("idp").state(clock.monotonic()) == state
        await clock.advance(299.9)
        assert len(idp.forms) == 1
        await clock.advance(0.2)
        assert len(idp.forms) == 2
        await clock.advance(300)
        assert len(idp.forms) == 3


async def test_garbage_answer_never_replaces_a_good_token() -> None:
    """A 200 with HTML, or JSON without access_token, is a failure; the good token stays."""
    idp = IdP(expires_in=30)
    async with managed(idp) as (manager, clock):
        idp.script.append(httpx.Response(200, content=b"<html>maintenance</html>"))
        idp.script.append(httpx.Response(200, json={"token_type": "bearer"}))
        while len(idp.forms) < 3:  # the login, then both garbage answers
            await clock.advance(0.1)
        token = manager.current("idp")
        assert token is not None
        assert token.access_token == "tok-1"
        error = manager.get("idp").last_error
        assert error is not None
        assert error.code == "invalid_response"
        assert manager.get("idp").state(clock.monotonic()) == "degraded"


FIVE_PROVIDERS = "refresh: {jitter: 0}\nproviders:\n" + "".join(
    f"  p{i}:\n    type: oauth2\n    token_url: https://idp.test/token\n"
    f"    grant: password\n    client_id: app\n    client_secret: s\n"
    f"    username: user{i}\n    password: pw\n"
    for i in range(5)
)


async def test_planned_requests_start_2_ms_apart_and_callers_skip_the_queue() -> None:
    """A crowd of providers due at once is spread out; a waiting caller is not."""
    clock = FakeClock(start=1000.0)
    idp = IdP(expires_in=300)
    sent: list[tuple[str, float]] = []
    user_of: dict[str, str] = {}  # refresh token -> the user it belongs to

    async def timed(request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        user = form.get("username") or user_of[form["refresh_token"]]
        sent.append((user, clock.monotonic()))
        response = await idp(request)
        user_of[json.loads(response.content)["refresh_token"]] = user
        return response

    async with managed(timed, FIVE_PROVIDERS, clock) as (manager, _):
        assert sent == [("user0", 1000.0)]  # the others wait for their slots
        token = await manager.token("p4")  # a caller's fetch does not wait for p4's slot
        assert sent[-1] == ("user4", 1000.0)
        await clock.advance(0.01)
        assert [user for user, _ in sent] == ["user0", "user4", "user1", "user2", "user3"]
        assert [at for _, at in sent[2:]] == pytest.approx([1000.002, 1000.004, 1000.006])
        assert manager.current("p4") is token  # p4's own slot came and went without a request

        # Refreshes at 2/3 of the servable lifetime (300 s less the 1 s serving floor):
        # p0 and p4 are due at the same moment, so p4 takes the next slot and each of
        # the others (due 2 ms apart) moves one slot later.
        due = 1000.0 + 299 * 2 / 3
        sent.clear()
        await clock.advance(201)
        assert [user for user, _ in sent] == ["user0", "user4", "user1", "user2", "user3"]
        assert [at for _, at in sent] == pytest.approx([due + 0.002 * n for n in range(5)])
        assert idp.grants().count("refresh_token") == 5


def _answer_503(request: httpx.Request) -> httpx.Response:
    return error(503)


def _answer_garbage(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b'{"token_type": "bearer"')


def _answer_unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


def _answer_too_late(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("stalled", request=request)


@pytest.mark.parametrize(
    "answer", [_answer_503, _answer_garbage, _answer_unreachable, _answer_too_late]
)
async def test_a_failed_token_request_is_freed_without_the_cyclic_collector(
    answer: Callable[[httpx.Request], httpx.Response],
) -> None:
    """Once the next failure replaces it, a failed request's error (and with it the frames,
    request and response its traceback holds) is freed by reference counting alone.

    The server process runs a full collection only rarely (broker.ops.heap): an error in a
    reference cycle (its traceback holding a frame that holds the task that holds the
    error) stayed in memory for the rest of the soak (issue 12).
    """
    gate = asyncio.Event()

    async def idp(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return answer(request)

    async def caller() -> str:  # joins the fetch in flight; keeps no exception
        try:
            await manager.token("idp")
        except TokenUnavailableError as exc:
            return exc.code
        return "served"

    gc.collect()
    gc.disable()
    try:
        async with managed(idp) as (manager, clock):
            joined = asyncio.ensure_future(caller())  # a caller waits with the refresh task
            await settle()
            gate.set()
            assert await joined == "token_unavailable"
            failed = manager.get("idp").last_error
            assert failed is not None
            first = weakref.ref(failed)
            del failed
            await clock.advance(manager.get("idp").policy.backoff_max + 1)
            assert manager.get("idp").failures >= 2
            assert first() is None
    finally:
        gc.enable()
