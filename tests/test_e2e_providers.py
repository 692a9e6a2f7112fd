"""Every provider end to end: the broker's HTTP API in front of a fake IdP.

Tokens live 2 s, so within a few seconds each test sees the broker refresh
ahead of expiry, follow rotated refresh tokens and fall back to a full login
when a refresh token is refused. Every token the broker serves is checked
against the fake that issued it: it must be one the fake minted, still valid
by the fake's own clock at the moment it was served, and not promised for
longer than the fake will honour it.

The broker, its callers and the fakes run in one event loop on a fake clock
(tests/inprocess.py): the seconds of token lifetime cost no real time, and the
fakes' clock is the broker's, so "valid at the moment it was served" is exact.
One smoke test at the end runs the HIRO password flow on real sockets in real
time, so that a real HTTP exchange with real token lifetimes stays covered.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime

import httpx
import pytest

from broker.fakes import aerion, hiro, hub
from broker.fakes.aerion import FakeAerion
from broker.fakes.base import FakeProvider
from broker.fakes.hiro import FakeHiro
from broker.fakes.hub import FakeHub
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.inprocess import STEP, IdPs, InProcess, in_process
from tests.support import FakeClock, running_broker, settings_from, wait_for

pytestmark = pytest.mark.anyio

TTL = 2.0

IDP = "http://127.0.0.1:9001"
"""The fake's origin: nothing listens there, IdPs routes by it (loopback, so plain
http:// passes the config's checks)."""

SERVE_MIN_REMAINING = 1.0
"""The broker's default ``refresh.serve_min_remaining``: a token with less left is not served."""

WATCH = 15.0
"""Fake seconds :func:`watch_refreshes` waits for the refreshes it expects."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def config_for(provider_yaml: str, url: str) -> str:
    """A config whose single provider ``p`` is *provider_yaml* with ``{url}`` = *url*."""
    return "providers:\n  p:\n" + _indent(provider_yaml.replace("{url}", url), 4)


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line + "\n" for line in text.strip("\n").splitlines())


@asynccontextmanager
async def broker_for(
    clock: FakeClock, fake: FakeProvider, provider_yaml: str
) -> AsyncIterator[InProcess]:
    """*fake* at :data:`IDP`, then a broker whose single provider ``p`` is *provider_yaml*
    ({url} filled), both on *clock* (the fake's ``now`` must be ``clock.wall``)."""
    assert fake.now == clock.wall, "the fake must issue tokens on the broker's clock"
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    async with in_process(settings_from(config_for(provider_yaml, IDP)), idps) as broker:
        yield broker


def checked_token(response: httpx.Response, fake: FakeProvider) -> str:
    """The token in a ``GET /token/p`` answer; asserts it is the fake's and valid right now."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    token = str(body["access_token"])
    assert token in fake.issued_access_tokens
    assert fake.is_access_token_valid(token), "served a token the IdP rejects"
    # Never less than serve_min_remaining left, never more than the lifetime.
    assert SERVE_MIN_REMAINING <= body["expires_in"] <= TTL
    # The expiry the broker states is never later than the IdP's own.
    promised = datetime.fromisoformat(body["expires_at"]).timestamp()
    idp_expiry = fake.access_token_expires_at(token)
    assert idp_expiry is not None
    assert promised <= idp_expiry
    return token


async def served_token(broker: InProcess, fake: FakeProvider) -> str:
    """GET /token/p; assert the token is the fake's and valid right now."""
    return checked_token(await broker.get("/token/p"), fake)


async def watch_refreshes(
    broker: InProcess, fake: FakeProvider, *, grant: str, count: int
) -> list[str]:
    """Keep fetching tokens every STEP fake seconds until the fake has seen *count*
    requests of *grant* (within WATCH fake seconds).

    Every token served along the way must be valid at the fake; returns them. Each token
    request reached the fake while the token before it could still be served (less than
    ``TTL - SERVE_MIN_REMAINING`` after the one before): the broker refreshed ahead of
    expiry rather than when a caller found the token run out.
    """
    clock = broker.clock
    seen: list[str] = []
    deadline = clock.monotonic() + WATCH
    while len(fake.token_requests(grant)) < count:
        assert clock.monotonic() < deadline, f"only {len(fake.token_requests(grant))} {grant}"
        token = await served_token(broker, fake)
        if not seen or seen[-1] != token:
            seen.append(token)
        await clock.advance(STEP)
    sent = [s.at for s in broker.idps.sent if s.delivered]
    assert len(sent) == len(fake.token_requests()), "the broker sent only token requests"
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert all(gap < TTL - SERVE_MIN_REMAINING for gap in gaps), gaps
    return seen


HIRO_APP = f"""
type: hiro
url: "{{url}}"
client_id: {hiro.DEMO_CLIENT_ID}
client_secret: {hiro.DEMO_CLIENT_SECRET}
username: {hiro.DEMO_USERNAME}
password: {hiro.DEMO_PASSWORD}
"""


def assert_hiro_password_flow(fake: FakeHiro, tokens: list[str]) -> None:
    """/app login once, then /refresh with each rotated refresh token in turn."""
    assert len(tokens) >= 3
    assert len(fake.token_requests("password")) == 1
    refreshes = fake.token_requests("refresh_token")
    sent = [r.json["refresh_token"] for r in refreshes if isinstance(r.json, dict)]
    assert len(sent) == len(refreshes)
    assert sent == fake.issued_refresh_tokens[: len(sent)]
    login = fake.token_requests("password")[0]
    assert login.path == "/api/auth/6/app"
    assert {"client_id", "client_secret", "username", "password"} == set(login.json or {})


async def test_hiro_password_flow_refreshes_before_expiry_and_follows_rotation(
    clock: FakeClock,
) -> None:
    """/app login, then /refresh with each rotated refresh token; never a second login."""
    fake = FakeHiro(ttl=TTL, rotate_refresh_tokens=True, now=clock.wall)
    async with broker_for(clock, fake, HIRO_APP) as broker:
        tokens = await watch_refreshes(broker, fake, grant="refresh_token", count=3)
        assert_hiro_password_flow(fake, tokens)


async def test_hiro_401_on_refresh_falls_back_to_app_login(clock: FakeClock) -> None:
    """A dead refresh token (HTTP 401 on /refresh) leads to a fresh /app login, no outage."""
    fake = FakeHiro(ttl=TTL, now=clock.wall)
    async with broker_for(clock, fake, HIRO_APP) as broker:
        await served_token(broker, fake)
        dead = fake.issued_refresh_tokens[-1]
        fake.revoke_refresh_token(dead)
        # No outage: every poll until the second login is served a valid token.
        await watch_refreshes(broker, fake, grant="password", count=2)
        await served_token(broker, fake)
        tried = [(r.json or {}).get("refresh_token") for r in fake.token_requests("refresh_token")]
        assert dead in tried, "the broker should have tried the refresh token first"


async def test_hiro_auth_prefix_is_configurable(clock: FakeClock) -> None:
    """auth_api: /api/auth/6.6 sends the login there."""
    fake = FakeHiro(ttl=TTL, auth_version="6.6", now=clock.wall)
    async with broker_for(clock, fake, HIRO_APP + "auth_api: /api/auth/6.6\n") as broker:
        await served_token(broker, fake)
        assert fake.token_requests("password")[0].path == "/api/auth/6.6/app"


@pytest.mark.parametrize("client_auth", ["client_secret_basic", "client_secret_post"])
async def test_hiro_oauth2_token_flow(clock: FakeClock, client_auth: str) -> None:
    """/token with grant_type=password, expires_in as a string, refresh via grant refresh_token."""
    fake = FakeHiro(ttl=TTL, auth_version="6.6", expires_in_as_string=True, now=clock.wall)
    config = HIRO_APP + f"flow: token\nauth_api: /api/auth/6.6\nclient_auth: {client_auth}\n"
    async with broker_for(clock, fake, config) as broker:
        await watch_refreshes(broker, fake, grant="refresh_token", count=2)
        login = fake.token_requests("password")[0]
        assert login.path == "/api/auth/6.6/token"
        has_basic = login.headers.get("authorization", "").startswith("Basic ")
        assert has_basic == (client_auth == "client_secret_basic")
        assert ("client_secret" in (login.form or {})) == (client_auth == "client_secret_post")


AERION = f"""
type: aerion
url: "{{url}}"
company_url: https://acme.aerion.app
client_id: {aerion.DEMO_CLIENT_ID}
username: {aerion.DEMO_EMAIL}
password: {aerion.DEMO_PASSWORD}
"""


async def test_aerion_password_grant_with_tenant_header_and_rotation(clock: FakeClock) -> None:
    """Every token request names the tenant; rotated refresh tokens are followed."""
    fake = FakeAerion(ttl=TTL, revoke_old_refresh_token=True, now=clock.wall)
    async with broker_for(clock, fake, AERION) as broker:
        await watch_refreshes(broker, fake, grant="refresh_token", count=3)
        assert len(fake.token_requests("password")) == 1
        for request in fake.token_requests():
            assert request.headers.get("companyurl") == "https://acme.aerion.app"
            assert request.form is not None
            assert {"client_id", "client_secret"} <= set(request.form)


async def test_aerion_invalid_grant_on_refresh_falls_back_to_password(clock: FakeClock) -> None:
    """invalid_grant for a revoked refresh token → password login again."""
    fake = FakeAerion(ttl=TTL, now=clock.wall)
    async with broker_for(clock, fake, AERION) as broker:
        await served_token(broker, fake)
        fake.revoke_refresh_token(fake.issued_refresh_tokens[-1])
        await watch_refreshes(broker, fake, grant="password", count=2)
        await served_token(broker, fake)


async def test_aerion_seeded_refresh_token_keeps_itself_alive(clock: FakeClock) -> None:
    """An SSO refresh token alone is enough; each rotation replaces the seed."""
    fake = FakeAerion(ttl=TTL, revoke_old_refresh_token=True, now=clock.wall)
    seed = fake.seed_refresh_token(aerion.DEMO_EMAIL)
    config = f"""
type: aerion
url: "{{url}}"
company_url: https://acme.aerion.app
refresh_token: {seed}
"""
    async with broker_for(clock, fake, config) as broker:
        await watch_refreshes(broker, fake, grant="refresh_token", count=3)
        sent = [(r.form or {}).get("refresh_token") for r in fake.token_requests()]
        assert seed == sent[0]
        assert len(set(sent)) == len(sent), "a rotated refresh token was reused"
        assert not fake.is_refresh_token_valid(seed)
        assert fake.token_requests("password") == []


HUB_SERVICE = f"""
type: hub
url: "{{url}}"
client_id: {hub.DEMO_SERVICE_ID}
client_secret: {hub.DEMO_SERVICE_SECRET}
scope: 0-0-0-0-0
"""


async def test_hub_client_credentials(clock: FakeClock) -> None:
    """Basic auth, scope of service ids, a new client_credentials token before each expiry."""
    fake = FakeHub(ttl=TTL, now=clock.wall)
    async with broker_for(clock, fake, HUB_SERVICE) as broker:
        await watch_refreshes(broker, fake, grant="client_credentials", count=3)
        request = fake.token_requests()[0]
        assert request.headers.get("authorization", "").startswith("Basic ")
        assert (request.form or {}).get("scope") == "0-0-0-0-0"
        assert fake.token_requests("refresh_token") == []


async def test_hub_password_offline_then_refresh_without_rotation(clock: FakeClock) -> None:
    """access_type=offline gets a refresh token; Hub keeps it, so every refresh reuses it."""
    fake = FakeHub(ttl=TTL, now=clock.wall)
    config = HUB_SERVICE + f"username: {hub.DEMO_LOGIN}\npassword: {hub.DEMO_PASSWORD}\n"
    async with broker_for(clock, fake, config) as broker:
        await watch_refreshes(broker, fake, grant="refresh_token", count=3)
        login = fake.token_requests("password")[0]
        assert (login.form or {}).get("access_type") == "offline"
        used = {(r.form or {}).get("refresh_token") for r in fake.token_requests("refresh_token")}
        assert len(used) == 1
        assert len(fake.token_requests("password")) == 1


async def test_hub_seeded_refresh_token(clock: FakeClock) -> None:
    """A Hub refresh token alone keeps the provider alive."""
    fake = FakeHub(ttl=TTL, now=clock.wall)
    seed = fake.seed_refresh_token(hub.DEMO_LOGIN)
    config = HUB_SERVICE + f"refresh_token: {seed}\n"
    async with broker_for(clock, fake, config) as broker:
        await watch_refreshes(broker, fake, grant="refresh_token", count=2)
        assert all((r.form or {}).get("refresh_token") == seed for r in fake.token_requests())


OAUTH2 = """
type: oauth2
token_url: "{url}/oauth/token"
client_id: app
client_secret: app-secret
"""


@pytest.mark.parametrize("client_auth", ["client_secret_basic", "client_secret_post"])
async def test_generic_client_credentials_with_audience_scope_and_headers(
    clock: FakeClock, client_auth: str
) -> None:
    """Client auth either way; scope, audience, extra params and headers reach the server."""
    fake = FakeOAuth2(
        clients={"app": "app-secret"},
        ttl=TTL,
        client_auth=client_auth,  # type: ignore[arg-type]  # the fake's Literal
        required_params={"audience": "https://api.example", "resource": "r1"},
        required_headers={"x-tenant": "blue"},
        now=clock.wall,
    )
    config = OAUTH2 + (
        f"grant: client_credentials\nclient_auth: {client_auth}\nscope: read write\n"
        "audience: https://api.example\nextra_params: {resource: r1}\n"
        "headers: {X-Tenant: blue}\n"
    )
    async with broker_for(clock, fake, config) as broker:
        await watch_refreshes(broker, fake, grant="client_credentials", count=2)
        form = fake.token_requests()[0].form or {}
        assert form.get("scope") == "read write"


async def test_generic_password_grant_with_rotation(clock: FakeClock) -> None:
    """password grant, then refresh_token grants with each rotated refresh token."""
    fake = FakeOAuth2(
        clients={"app": "app-secret"},
        users={"alice": "alice-pw"},
        ttl=TTL,
        rotate_refresh_tokens=True,
        revoke_rotated_refresh_tokens=True,
        now=clock.wall,
    )
    config = OAUTH2 + "grant: password\nusername: alice\npassword: alice-pw\n"
    async with broker_for(clock, fake, config) as broker:
        await watch_refreshes(broker, fake, grant="refresh_token", count=3)
        assert len(fake.token_requests("password")) == 1


async def test_generic_missing_expires_in_uses_default_lifetime(clock: FakeClock) -> None:
    """No expires_in: the configured default lifetime drives the refresh schedule."""
    fake = FakeOAuth2(
        clients={"app": "app-secret"}, ttl=TTL, include_expires_in=False, now=clock.wall
    )
    config = OAUTH2 + "grant: client_credentials\ndefault_expires_in: 2\n"
    async with broker_for(clock, fake, config) as broker:
        body = (await broker.get("/token/p")).json()
        assert body["expires_in"] <= 2
        await watch_refreshes(broker, fake, grant="client_credentials", count=3)


# -- on real sockets, in real time ------------------------------------------------------------


@contextmanager
def real_broker_for(fake: FakeProvider, provider_yaml: str) -> Iterator[httpx.Client]:
    """Serve *fake* on 127.0.0.1, then a broker (on its own socket) in front of it."""
    with (
        serve_in_thread(fake.app) as url,
        running_broker(settings_from(config_for(provider_yaml, url))) as client,
    ):
        yield client


@pytest.mark.smoke
def test_real_socket_hiro_password_flow() -> None:
    """As test_hiro_password_flow_refreshes_before_expiry_and_follows_rotation, on real
    sockets with real 2 s tokens: the refreshes happen in real time over real HTTP."""
    fake = FakeHiro(ttl=TTL, rotate_refresh_tokens=True)
    with real_broker_for(fake, HIRO_APP) as client:
        tokens: list[str] = []

        def refreshed_three_times() -> bool:
            token = checked_token(client.get("/token/p"), fake)
            if not tokens or tokens[-1] != token:
                tokens.append(token)
            return len(fake.token_requests("refresh_token")) >= 3

        wait_for(refreshed_three_times, timeout=15, interval=0.05)
        assert_hiro_password_flow(fake, tokens)
