"""The token contract at its edges, through the broker's HTTP API against a fake IdP.

Forced refresh by ETag/If-Match, the caller rate limit, the serving floor,
answers during backoff, provider states, and the fast path answering exactly
as the FastAPI route does.

The broker, its callers and the fake run in one event loop on a fake clock
(tests/inprocess.py): time passes only where a test advances it, so the edges
of a token's life are met exactly and cost no real time. One smoke test at the
end compares the fast path with the route on real sockets, where uvicorn
renders both answers.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from broker.web.app import create_app
from broker.web.fastpath import TokenFastPath
from tests.inprocess import STEP, IdPs, InProcess, drive, in_process, threads
from tests.support import FakeClock, settings_from, wait_for

pytestmark = pytest.mark.anyio

SECRET = "app-secret-7c1d"

IDP = "http://127.0.0.1:9001"
"""The fake's origin: nothing listens there, IdPs routes by it (loopback, so plain
http:// passes the config's checks)."""
TOKEN_PATH = "/oauth/token"

CONFIG = """
request_timeout: 5
refresh: {{backoff_initial: 0.2, backoff_max: 1, caller_burst: {burst}, caller_interval: 30}}
providers:
  idp:
    type: oauth2
    token_url: "{url}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: {secret}
"""


def config(url: str, burst: int = 10) -> str:
    return CONFIG.format(url=url, secret=SECRET, burst=burst)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@asynccontextmanager
async def broker(
    clock: FakeClock,
    ttl: float = 300.0,
    burst: int = 10,
    *,
    fake: FakeOAuth2 | None = None,
    extra: str = "",
) -> AsyncIterator[tuple[InProcess, FakeOAuth2]]:
    """The broker in front of *fake* (by default one issuing *ttl* s tokens), both on
    *clock*; *extra* is appended to the config (the provider's further keys)."""
    fake = fake or FakeOAuth2(clients={"app": SECRET}, ttl=ttl, now=clock.wall)
    assert fake.now == clock.wall, "the fake must issue tokens on the broker's clock"
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    async with in_process(settings_from(config(IDP, burst) + extra), idps) as running:
        yield running, fake


async def post(broker: InProcess, path: str, **kwargs: Any) -> httpx.Response:
    """``POST path``; the clock advances only while the broker keeps the caller waiting."""
    return await drive(broker.clock, broker.client.post(path, **kwargs), step=broker.step)


async def provider_status(broker: InProcess) -> dict[str, Any]:
    body: dict[str, Any] = (await broker.get("/providers")).json()
    return body["providers"]["idp"]  # type: ignore[no-any-return]


# -- forced refresh: ETag and If-Match ------------------------------------------------------


async def test_every_token_answer_names_its_token_by_etag(clock: FakeClock) -> None:
    """ETag header and JSON etag agree, on JSON and raw answers; the tag is not the token."""
    async with broker(clock) as (client, fake):
        assert fake.token_requests()[0].headers["user-agent"].startswith("credential-broker/")
        body = (await client.get("/token/idp")).json()
        raw = await client.get("/token/idp", headers={"Accept": "text/plain"})
        assert (await client.get("/token/idp")).headers["etag"] == body["etag"]
        assert body["etag"] == raw.headers["etag"]
        assert body["etag"][0] == body["etag"][-1] == '"'
        assert body["access_token"] not in body["etag"]


async def test_a_refused_token_is_never_handed_back_and_a_crowd_causes_one_refresh(
    clock: FakeClock,
) -> None:
    """Right after start-up, If-Match with the current token refreshes (no cooldown); every
    later caller naming the same refused token gets the new one without a request."""
    async with broker(clock) as (client, fake):
        refused = (await client.get("/token/idp")).json()
        first = await post(client, "/token/idp/refresh", headers={"If-Match": refused["etag"]})
        assert first.status_code == 200
        assert first.json()["access_token"] != refused["access_token"]
        assert first.headers["etag"] == first.json()["etag"] != refused["etag"]
        for _ in range(20):
            again = await post(client, "/token/idp/refresh", headers={"If-Match": refused["etag"]})
            assert again.json()["access_token"] == first.json()["access_token"]
        tag = refused["etag"].strip(chr(34))
        by_query = await post(client, f"/token/idp/refresh?rejected={tag}")
        assert by_query.json()["access_token"] == first.json()["access_token"]
        assert len(fake.token_requests()) == 2


async def test_forced_refresh_without_if_match_always_reaches_the_idp(clock: FakeClock) -> None:
    """Two forced refreshes in a row are two new tokens."""
    async with broker(clock) as (client, fake):
        await client.get("/token/idp")
        tokens = {(await post(client, "/token/idp/refresh")).json()["access_token"] for _ in "ab"}
        assert len(tokens) == 2
        assert len(fake.token_requests()) == 3


# -- the caller rate limit -------------------------------------------------------------------


async def test_a_loop_of_forced_refreshes_is_cut_off_with_429(clock: FakeClock) -> None:
    """A burst of 3 goes through; then 429 refresh_rate_limited with Retry-After, counted."""
    async with broker(clock, burst=3) as (client, fake):
        await client.get("/token/idp")
        answers = [await post(client, "/token/idp/refresh") for _ in range(6)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429, 429]
        limited = answers[-1]
        assert limited.json()["error"] == "refresh_rate_limited"
        # No time has passed: the next allowance is a whole caller_interval away.
        assert limited.headers["retry-after"] == "30"
        assert len(fake.token_requests()) == 4
        assert (await client.get("/token/idp")).status_code == 200  # plain reads: never limited
        metrics = (await client.get("/metrics")).text
        assert 'broker_caller_fetches_refused_total{provider="idp"} 3.0' in metrics


async def test_min_valid_just_under_the_lifetime_cannot_loop_the_idp(clock: FakeClock) -> None:
    """GET ?min_valid=<lifetime - 1> in a loop: one request per allowance, then 429."""
    async with broker(clock, ttl=60, burst=2) as (client, fake):
        await client.get("/token/idp")

        async def limited() -> bool:
            return (await client.get("/token/idp?min_valid=59")).status_code == 429

        # Each new token meets min_valid=59 for a second; then the caller asks again.
        await client.eventually(limited, within=6)
        assert len(fake.token_requests()) == 3  # the login and the burst of 2
        times = client.idps.times(IDP, TOKEN_PATH)
        for earlier, later in itertools.pairwise(times):
            # Not before the token stopped meeting min_valid, and at the next poll after.
            assert 1.0 <= round(later - earlier, 9) <= 1.0 + STEP
        answer = await client.get("/token/idp?min_valid=59")
        assert answer.json()["error"] == "refresh_rate_limited"
        assert (await client.get("/token/idp")).status_code == 200


# -- answers during backoff ------------------------------------------------------------------


async def test_forced_refresh_during_backoff_serves_the_valid_token_flagged(
    clock: FakeClock,
) -> None:
    """A retry not yet due: 200 with the current token and X-Broker-Refresh-Failed, not 503;
    unless the caller says that very token was refused."""
    async with broker(clock) as (client, fake):
        current = (await client.get("/token/idp")).json()
        fake.fail_next(1000, 503, {"error": "temporarily_unavailable"}, {"Retry-After": "60"})
        failed = await post(client, "/token/idp/refresh")
        assert failed.status_code == 200
        assert failed.json()["access_token"] == current["access_token"]
        assert failed.headers["x-broker-refresh-failed"] == "temporarily_unavailable"
        during = await post(client, "/token/idp/refresh")
        assert during.status_code == 200
        assert during.headers["x-broker-refresh-failed"] == "temporarily_unavailable"
        refused = await post(client, "/token/idp/refresh", headers={"If-Match": current["etag"]})
        assert refused.status_code == 503
        assert refused.json()["error"] == "token_unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        assert len(fake.token_requests()) == 2  # the login and the one failed refresh


# -- the serving floor -----------------------------------------------------------------------


async def test_no_answer_has_less_than_a_second_left_or_comes_after_its_expires_at(
    clock: FakeClock,
) -> None:
    """A 3 s token whose refreshes fail: every 200 has expires_in >= 1 and arrives before the
    expires_at it states; then 503, never a token in its last second."""
    async with broker(clock, ttl=3) as (client, fake):
        fake.fail_next(1000, 503)
        seen: list[tuple[int, float, float]] = []
        statuses: list[int] = []
        deadline = clock.monotonic() + 4
        while clock.monotonic() < deadline:
            response = await client.get("/token/idp")
            received = clock.wall()
            statuses.append(response.status_code)
            if response.status_code == 200:
                body = response.json()
                expires_at = datetime.fromisoformat(body["expires_at"]).timestamp()
                seen.append((body["expires_in"], received, expires_at))
            await clock.advance(STEP)
        assert seen, "the first token was served"
        assert min(expires_in for expires_in, _, _ in seen) >= 1
        # A full second left at every answer, to the millisecond expires_at is stated in.
        assert all(received <= expires_at - 0.999 for _, received, expires_at in seen)
        # Served, then refused, and never served again: no token came back to life.
        served = len(seen)
        assert statuses == [200] * served + [503] * (len(statuses) - served)
        assert statuses[-1] == 503
        # Served up to the floor: the last answer came less than one poll before it.
        _, last_received, last_expires_at = seen[-1]
        assert last_received > last_expires_at - 1 - STEP
        providers = await provider_status(client)
        assert providers["expires_in"] is None
        assert (await client.get("/readyz")).status_code == 503


async def test_a_sink_never_holds_a_token_it_may_not_serve(
    clock: FakeClock, tmp_path: Path
) -> None:
    """The sink file holds the token while it may be served, is removed when it may not
    (no replacement came), and comes back with the next token."""
    sink = tmp_path / "idp.json"
    extra = f"    sink: {{path: {sink}, format: json}}\n"
    async with threads() as work, broker(clock, ttl=3, extra=extra) as (client, fake):

        async def sink_token() -> str | None:
            """The token in the sink file once the broker's file work is done, or None."""
            await work.idle()
            if not sink.exists():
                return None
            token: str = json.loads(sink.read_text())["access_token"]
            return token

        await work.idle()
        written = json.loads(sink.read_text())
        assert written["access_token"] == (await client.get("/token/idp")).json()["access_token"]
        assert written["expires_in"] >= 1
        fake.fail_next(1000, 503)

        async def removed() -> bool:
            in_file = await sink_token()
            answer = await client.get("/token/idp")
            if in_file is not None:  # never a token the broker would not serve now
                assert answer.status_code == 200
                assert answer.json()["access_token"] == in_file
            return in_file is None

        await client.eventually(removed, within=5)
        assert (await client.get("/token/idp")).status_code == 503
        fake.recover()

        async def back() -> bool:
            return await sink_token() is not None

        await client.eventually(back, within=10)
        again = await sink_token()
        assert again != written["access_token"]
        assert again == (await client.get("/token/idp")).json()["access_token"]


# -- states ------------------------------------------------------------------------------------


async def test_a_provider_whose_tokens_keep_dying_is_never_starting_again(
    clock: FakeClock,
) -> None:
    """Tokens that live 1 s can never be served (floor 1 s): the state says failing, with
    the reason, from the first answer on; starting is only before any outcome."""
    async with broker(clock, ttl=1.5) as (client, fake):
        deadline = clock.monotonic() + 2.5
        states = set()
        while clock.monotonic() < deadline:
            status = await provider_status(client)
            if status["refreshes"] or status["failures"]:
                states.add(status["state"])
            await clock.advance(STEP)
        assert states == {"failing"}
        assert status["last_error"]["code"] == "expired_on_arrival"
        assert len(fake.token_requests()) >= 2


async def test_a_token_url_that_is_not_a_token_endpoint_is_misconfigured(
    clock: FakeClock,
) -> None:
    """A 404 from the token URL is shown as endpoint_not_found, state misconfigured, and
    retried only every backoff_max."""
    fake = FakeOAuth2(clients={"app": SECRET}, token_path="/oauth/token", now=clock.wall)
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    wrong = config(IDP).replace("/oauth/token", "/oauth/tokens")
    async with in_process(settings_from(wrong), idps) as client:

        async def failed() -> bool:
            return bool((await provider_status(client))["last_error"])

        await client.eventually(failed, within=10)
        status = await provider_status(client)
        assert (status["state"], status["last_error"]["code"]) == (
            "misconfigured",
            "endpoint_not_found",
        )
        response = await client.get("/token/idp")
        assert response.status_code == 503
        assert "endpoint_not_found" in response.json()["message"]
        assert len(fake.requests) == 1
        # backoff_max is 1 s here: nothing sooner, and then exactly one more.
        first = idps.times(IDP, "/oauth/tokens")[0]
        await clock.advance(first + 1 - clock.monotonic() - STEP)
        assert len(fake.requests) == 1
        await clock.advance(2 * STEP)
        assert len(fake.requests) == 2
        assert idps.times(IDP, "/oauth/tokens")[1] - first == pytest.approx(1.0)


# -- the fast path answers exactly like the route -----------------------------------------------


def compared(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "server")}
    return response.status_code, headers, response.content


@pytest.mark.parametrize("situation", ["ready", "raw", "degraded", "refresh-failed", "limited"])
async def test_fast_path_answers_exactly_like_the_api_route(
    clock: FakeClock, situation: str
) -> None:
    """Same status, headers and bytes from both paths; the fast path served the plain GET
    and not the routed one (fails with the fast path switched off)."""
    fake = FakeOAuth2(clients={"app": SECRET}, now=clock.wall)
    # The clock does not move (nothing here makes the broker wait), so two answers of one
    # token are identical.
    frozen = clock.monotonic()
    async with broker(clock, burst=1, fake=fake) as (client, _):
        assert (await client.get("/readyz")).status_code == 200
        fast = client.app
        accept = {"Accept": "text/plain"} if situation == "raw" else {}
        routed_path = "/token/idp?format=raw" if situation == "raw" else "/token/idp?format=json"
        if situation in ("degraded", "refresh-failed"):
            fake.fail_next(1000, 503, {"error": "temporarily_unavailable"})
            refreshed = await post(client, "/token/idp/refresh")
            assert refreshed.headers["x-broker-refresh-failed"] == "temporarily_unavailable"
            if situation == "refresh-failed":
                # A forced refresh answered during backoff equals the plain GET.
                during = await post(client, "/token/idp/refresh")
                assert compared(during) == compared(await client.get(routed_path))
        if situation == "limited":
            assert (await post(client, "/token/idp/refresh")).status_code == 200
            assert (await post(client, "/token/idp/refresh")).status_code == 429
        before = fast.served
        plain = await client.get("/token/idp", headers=accept)
        assert fast.served == before + 1
        routed = await client.get(routed_path, headers=accept)
        assert fast.served == before + 1
        assert plain.status_code == 200
        assert compared(plain) == compared(routed)
        has_failure = "x-broker-refresh-failed" in plain.headers
        assert has_failure == (situation in ("degraded", "refresh-failed"))
        assert clock.monotonic() == frozen


# -- on real sockets ------------------------------------------------------------------------------


@contextmanager
def frozen_broker(fake: FakeOAuth2) -> Iterator[tuple[httpx.Client, TokenFastPath]]:
    """The broker on real sockets but a clock that does not move, so two answers of one
    token are identical."""
    with serve_in_thread(fake.app) as url:
        fast = create_app(settings_from(config(url, burst=1)), clock=FakeClock())
        with (
            serve_in_thread(fast, lifespan="on") as base,
            httpx.Client(base_url=base, timeout=10) as client,
        ):
            wait_for(lambda: client.get("/readyz").status_code == 200)
            yield client, fast


@pytest.mark.smoke
def test_real_socket_fast_path_answers_exactly_like_the_api_route() -> None:
    """As test_fast_path_answers_exactly_like_the_api_route (ready), through uvicorn: the
    bytes on the wire are the same from both paths, and the fast path served the plain GET."""
    fake = FakeOAuth2(clients={"app": SECRET})
    with frozen_broker(fake) as (client, fast):
        before = fast.served
        plain = client.get("/token/idp")
        assert fast.served == before + 1
        routed = client.get("/token/idp?format=json")
        assert fast.served == before + 1
        assert plain.status_code == 200
        assert compared(plain) == compared(routed)
        assert "x-broker-refresh-failed" not in plain.headers
