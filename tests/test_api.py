"""The HTTP contract against a fake generic OAuth2 server.

Over real HTTP, except where time has to pass (a token ageing, retries, a slow
token endpoint): those tests run the broker, its callers and the fake in one event
loop on a fake clock (tests/inprocess.py), where the seconds cost nothing and every
run takes the same steps.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.inprocess import IdPs, InProcess, drive, in_process
from tests.support import FakeClock, running_broker, settings_from

IDP = "http://127.0.0.1:9001"
"""The fake's origin in-process: nothing listens there, IdPs routes by it."""
TOKEN_PATH = "/oauth/token"

SECRET = "app-secret-7c1d"

CONFIG = """
request_timeout: 5
refresh: {{backoff_initial: 0.2, backoff_max: 1}}
providers:
  idp:
    type: oauth2
    token_url: "{url}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: {secret}
"""


@contextmanager
def broker(
    ttl: float = 60.0, app_wrapper: type | None = None
) -> Iterator[tuple[httpx.Client, FakeOAuth2]]:
    fake = FakeOAuth2(clients={"app": SECRET}, ttl=ttl)
    app: ASGIApp = fake.app if app_wrapper is None else app_wrapper(fake.app)
    with serve_in_thread(app) as url:
        settings = settings_from(CONFIG.format(url=url, secret=SECRET))
        with running_broker(settings) as client:
            yield client, fake


@asynccontextmanager
async def in_process_broker(
    clock: FakeClock, fake: FakeOAuth2, app: ASGIApp | None = None
) -> AsyncIterator[InProcess]:
    """The broker in front of *fake* (served as *app*, by default itself), both on *clock*."""
    assert fake.now == clock.wall, "the fake must issue tokens on the broker's clock"
    idps = IdPs(clock)
    idps.serve(IDP, app or fake.app)
    async with in_process(settings_from(CONFIG.format(url=IDP, secret=SECRET)), idps) as running:
        yield running


def test_token_json_shape_and_headers() -> None:
    """200 JSON with the four fields, Bearer, no-store; expires_at is RFC 3339 UTC."""
    with broker() as (client, fake):
        response = client.get("/token/idp")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert {"access_token", "token_type", "expires_in", "expires_at", "etag"} == set(body)
        assert response.headers["etag"] == body["etag"]
        assert fake.issued_access_tokens[-1] == body["access_token"]
        assert body["token_type"] == "Bearer"
        assert 55 <= body["expires_in"] <= 60
        assert body["expires_at"].endswith("Z")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/token/idp?format=raw", {}),
        ("/token/idp", {"Accept": "text/plain"}),
    ],
)
def test_raw_token(path: str, headers: dict[str, str]) -> None:
    """Accept: text/plain or ?format=raw gives the bare token."""
    with broker() as (client, fake):
        response = client.get(path, headers=headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert fake.issued_access_tokens[-1] == response.text


@pytest.mark.anyio
async def test_min_valid_refreshes_first() -> None:
    """min_valid above what is left gets a new token; below it, the same one."""
    clock = FakeClock()
    fake = FakeOAuth2(clients={"app": SECRET}, ttl=30, now=clock.wall)
    async with in_process_broker(clock, fake) as client:
        first = (await client.get("/token/idp")).json()
        same = (await client.get("/token/idp?min_valid=5")).json()
        assert first["access_token"] == same["access_token"]

        async def aged() -> bool:
            expires_in: int = (await client.get("/token/idp")).json()["expires_in"]
            return expires_in <= 28

        # Let the token age past 1 s of its 30, so that min_valid=29 needs a new one.
        await client.eventually(aged, within=10)
        fresh = (await client.get("/token/idp?min_valid=29")).json()
        assert fresh["access_token"] != first["access_token"]
        assert fresh["expires_in"] >= 29
        assert len(fake.token_requests()) == 2


@pytest.mark.parametrize("value", ["-1", "abc", "86401", "1.5"])
def test_bad_min_valid_is_422_with_stable_code(value: str) -> None:
    """A bad min_valid is rejected before anything else happens."""
    with broker() as (client, _):
        response = client.get(f"/token/idp?min_valid={value}")
        assert response.status_code == 422
        assert response.json()["error"] == "invalid_parameter"
        assert "min_valid" in response.json()["message"]


def test_min_valid_longer_than_tokens_live() -> None:
    """Asking for more validity than the IdP ever gives is a clear 422, not a refresh loop."""
    with broker(ttl=30) as (client, fake):
        client.get("/token/idp")
        response = client.get("/token/idp?min_valid=3600")
        assert response.status_code == 422
        assert response.json()["error"] == "min_valid_unsatisfiable"
        assert len(fake.token_requests()) == 1


def test_unknown_provider_is_404() -> None:
    """Stable code, JSON body."""
    with broker() as (client, _):
        response = client.get("/token/nope")
        assert response.status_code == 404
        assert response.json()["error"] == "unknown_provider"
        assert client.get("/token/idp/extra").status_code == 404


def test_forced_refresh_returns_a_new_token() -> None:
    """POST .../refresh asks the IdP again and serves the answer."""
    with broker() as (client, fake):
        first = client.get("/token/idp").json()["access_token"]
        response = client.post("/token/idp/refresh")
        assert response.status_code == 200
        assert response.json()["access_token"] != first
        assert fake.issued_access_tokens[-1] == response.json()["access_token"]


@pytest.mark.anyio
async def test_idp_down_at_start_gives_503_then_recovers() -> None:
    """Liveness stays 200; readiness and tokens are 503 with Retry-After until the IdP answers."""
    clock = FakeClock()
    fake = FakeOAuth2(clients={"app": SECRET}, ttl=60, now=clock.wall)
    fake.fail_next(3, 503, {"error": "temporarily_unavailable"}, {"Retry-After": "1"})
    async with in_process_broker(clock, fake) as client:
        assert (await client.get("/healthz")).status_code == 200
        response = await client.get("/token/idp")
        assert response.status_code == 503
        assert response.json()["error"] == "token_unavailable"
        assert "temporarily_unavailable" in response.json()["message"]
        # No time has passed: the retry the IdP asked for is exactly 1 s away.
        assert response.headers["retry-after"] == "1"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["providers"]["idp"]["state"] == "failing"

        async def ready_now() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await client.eventually(ready_now, within=15)
        body = (await client.get("/token/idp")).json()
        assert fake.issued_access_tokens[-1] == body["access_token"]
        # Retry-After: 1 and backoff_max: 1 leave one choice: a retry every second.
        times = client.idps.times(IDP, TOKEN_PATH)
        assert len(times) == 4
        assert [round(b - a, 9) for a, b in itertools.pairwise(times)] == [1.0, 1.0, 1.0]


def test_providers_status() -> None:
    """Per-provider status fields, and no secret or token in the body."""
    with broker() as (client, fake):
        client.get("/token/idp")
        body = client.get("/providers").json()["providers"]["idp"]
        assert body["state"] == "ready"
        assert body["type"] == "oauth2"
        assert body["refreshes"] == 1
        assert body["failures"] == 0
        assert body["next_refresh_in"] > 30
        assert body["last_error"] is None
        # No state_dir, no Redis: tokens live in memory only, and nothing is shared.
        assert client.get("/providers").json()["store"] == {
            "backend": "memory",
            "where": None,
            "connected": None,
            "leases_held": [],
            "last_announcement": None,
            "last_error": None,
        }
        assert client.get("/readyz").json()["store"] == {"backend": "memory", "connected": None}
        text = client.get("/providers").text + client.get("/readyz").text
        assert SECRET not in text
        assert fake.issued_access_tokens[-1] not in text


def test_openapi_documents_the_api() -> None:
    """The OpenAPI document lists every route with its error answers."""
    with broker() as (client, _):
        spec = client.get("/openapi.json").json()
        assert {
            "/token/{provider}",
            "/token/{provider}/refresh",
            "/healthz",
            "/readyz",
            "/providers",
        } <= set(spec["paths"])
        token_get = spec["paths"]["/token/{provider}"]["get"]
        assert {"200", "404", "422", "503"} <= set(token_get["responses"])


class SlowTokenEndpoint:
    """Wraps a fake so token requests take 1 s of *clock*: long enough for callers to pile up."""

    def __init__(self, app: ASGIApp, clock: FakeClock) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/token"):
            await self.clock.sleep(1.0)
        await self.app(scope, receive, send)


@pytest.mark.anyio
async def test_200_concurrent_cold_requests_cause_one_token_request() -> None:
    """Single flight through the HTTP API: 200 callers, one IdP request, one token."""
    clock = FakeClock()
    fake = FakeOAuth2(clients={"app": SECRET}, ttl=60, now=clock.wall)
    async with in_process_broker(clock, fake, SlowTokenEndpoint(fake.app, clock)) as client:
        # The broker's first token request is on its way and will take 1 s: all 200 ask
        # before any time passes, so all of them wait for it.
        started = clock.monotonic()
        calls = asyncio.gather(*(client.client.get("/token/idp") for _ in range(200)))
        responses = await drive(clock, calls)
        assert [r.status_code for r in responses] == [200] * 200
        assert {fake.issued_access_tokens[0]} == {r.json()["access_token"] for r in responses}
        assert len(fake.token_requests()) == 1
        assert client.idps.times(IDP, TOKEN_PATH) == [started]
        # They were answered when the one answer came, not before and not much after.
        assert 1.0 <= clock.monotonic() - started <= 1.0 + client.step
