"""Every provider end to end: the broker's HTTP API in front of a fake IdP on 127.0.0.1.

Tokens live 2 s, so within a few seconds each test sees the broker refresh
ahead of expiry, follow rotated refresh tokens and fall back to a full login
when a refresh token is refused. Every token the broker serves is checked
against the fake that issued it: it must be one the fake minted and still valid
by the fake's own clock at the moment it was served.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from broker.fakes import aerion, hiro, hub
from broker.fakes.aerion import FakeAerion
from broker.fakes.base import FakeProvider
from broker.fakes.hiro import FakeHiro
from broker.fakes.hub import FakeHub
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.support import running_broker, settings_from, wait_for

TTL = 2.0


@contextmanager
def broker_for(fake: FakeProvider, provider_yaml: str) -> Iterator[tuple[httpx.Client, str]]:
    """Serve *fake*, then a broker whose single provider ``p`` is *provider_yaml* ({url} filled)."""
    with serve_in_thread(fake.app) as url:
        yaml_text = "providers:\n  p:\n" + _indent(provider_yaml.replace("{url}", url), 4)
        with running_broker(settings_from(yaml_text)) as client:
            yield client, url


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line + "\n" for line in text.strip("\n").splitlines())


def served_token(client: httpx.Client, fake: FakeProvider) -> str:
    """GET /token/p; assert the token is the fake's and valid right now."""
    response = client.get("/token/p")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["access_token"] in fake.issued_access_tokens
    assert fake.is_access_token_valid(body["access_token"]), "served a token the IdP rejects"
    assert 0 <= body["expires_in"] <= TTL
    return str(body["access_token"])


def watch_refreshes(
    client: httpx.Client, fake: FakeProvider, *, grant: str, count: int
) -> list[str]:
    """Keep fetching tokens until the fake has seen *count* requests of *grant*.

    Every token served along the way must be valid at the fake; returns them.
    """
    seen: list[str] = []
    deadline = time.monotonic() + 15
    while len(fake.token_requests(grant)) < count:
        assert time.monotonic() < deadline, f"only {len(fake.token_requests(grant))} {grant}"
        token = served_token(client, fake)
        if not seen or seen[-1] != token:
            seen.append(token)
        time.sleep(0.05)
    return seen


HIRO_APP = f"""
type: hiro
url: "{{url}}"
client_id: {hiro.DEMO_CLIENT_ID}
client_secret: {hiro.DEMO_CLIENT_SECRET}
username: {hiro.DEMO_USERNAME}
password: {hiro.DEMO_PASSWORD}
"""


def test_hiro_password_flow_refreshes_before_expiry_and_follows_rotation() -> None:
    """/app login, then /refresh with each rotated refresh token; never a second login."""
    fake = FakeHiro(ttl=TTL, rotate_refresh_tokens=True)
    with broker_for(fake, HIRO_APP) as (client, _):
        tokens = watch_refreshes(client, fake, grant="refresh_token", count=3)
        assert len(tokens) >= 3
        assert len(fake.token_requests("password")) == 1
        refreshes = fake.token_requests("refresh_token")
        sent = [r.json["refresh_token"] for r in refreshes if isinstance(r.json, dict)]
        assert sent == fake.issued_refresh_tokens[: len(sent)]
        login = fake.token_requests("password")[0]
        assert login.path == "/api/auth/6/app"
        assert {"client_id", "client_secret", "username", "password"} == set(login.json or {})


def test_hiro_401_on_refresh_falls_back_to_app_login() -> None:
    """A dead refresh token (HTTP 401 on /refresh) leads to a fresh /app login, no outage."""
    fake = FakeHiro(ttl=TTL)
    with broker_for(fake, HIRO_APP) as (client, _):
        served_token(client, fake)
        dead = fake.issued_refresh_tokens[-1]
        fake.revoke_refresh_token(dead)
        wait_for(lambda: len(fake.token_requests("password")) == 2)
        served_token(client, fake)
        tried = [(r.json or {}).get("refresh_token") for r in fake.token_requests("refresh_token")]
        assert dead in tried, "the broker should have tried the refresh token first"


def test_hiro_auth_prefix_is_configurable() -> None:
    """auth_api: /api/auth/6.6 sends the login there."""
    fake = FakeHiro(ttl=TTL, auth_version="6.6")
    with broker_for(fake, HIRO_APP + "auth_api: /api/auth/6.6\n") as (client, _):
        served_token(client, fake)
        assert fake.token_requests("password")[0].path == "/api/auth/6.6/app"


@pytest.mark.parametrize("client_auth", ["client_secret_basic", "client_secret_post"])
def test_hiro_oauth2_token_flow(client_auth: str) -> None:
    """/token with grant_type=password, expires_in as a string, refresh via grant refresh_token."""
    fake = FakeHiro(ttl=TTL, auth_version="6.6", expires_in_as_string=True)
    config = HIRO_APP + f"flow: token\nauth_api: /api/auth/6.6\nclient_auth: {client_auth}\n"
    with broker_for(fake, config) as (client, _):
        watch_refreshes(client, fake, grant="refresh_token", count=2)
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


def test_aerion_password_grant_with_tenant_header_and_rotation() -> None:
    """Every token request names the tenant; rotated refresh tokens are followed."""
    fake = FakeAerion(ttl=TTL, revoke_old_refresh_token=True)
    with broker_for(fake, AERION) as (client, _):
        watch_refreshes(client, fake, grant="refresh_token", count=3)
        assert len(fake.token_requests("password")) == 1
        for request in fake.token_requests():
            assert request.headers.get("companyurl") == "https://acme.aerion.app"
            assert request.form is not None
            assert {"client_id", "client_secret"} <= set(request.form)


def test_aerion_invalid_grant_on_refresh_falls_back_to_password() -> None:
    """invalid_grant for a revoked refresh token → password login again."""
    fake = FakeAerion(ttl=TTL)
    with broker_for(fake, AERION) as (client, _):
        served_token(client, fake)
        fake.revoke_refresh_token(fake.issued_refresh_tokens[-1])
        wait_for(lambda: len(fake.token_requests("password")) == 2)
        served_token(client, fake)


def test_aerion_seeded_refresh_token_keeps_itself_alive() -> None:
    """An SSO refresh token alone is enough; each rotation replaces the seed."""
    fake = FakeAerion(ttl=TTL, revoke_old_refresh_token=True)
    seed = fake.seed_refresh_token(aerion.DEMO_EMAIL)
    config = f"""
type: aerion
url: "{{url}}"
company_url: https://acme.aerion.app
refresh_token: {seed}
"""
    with broker_for(fake, config) as (client, _):
        watch_refreshes(client, fake, grant="refresh_token", count=3)
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


def test_hub_client_credentials() -> None:
    """Basic auth, scope of service ids, a new client_credentials token before each expiry."""
    fake = FakeHub(ttl=TTL)
    with broker_for(fake, HUB_SERVICE) as (client, _):
        watch_refreshes(client, fake, grant="client_credentials", count=3)
        request = fake.token_requests()[0]
        assert request.headers.get("authorization", "").startswith("Basic ")
        assert (request.form or {}).get("scope") == "0-0-0-0-0"
        assert fake.token_requests("refresh_token") == []


def test_hub_password_offline_then_refresh_without_rotation() -> None:
    """access_type=offline gets a refresh token; Hub keeps it, so every refresh reuses it."""
    fake = FakeHub(ttl=TTL)
    config = HUB_SERVICE + f"username: {hub.DEMO_LOGIN}\npassword: {hub.DEMO_PASSWORD}\n"
    with broker_for(fake, config) as (client, _):
        watch_refreshes(client, fake, grant="refresh_token", count=3)
        login = fake.token_requests("password")[0]
        assert (login.form or {}).get("access_type") == "offline"
        used = {(r.form or {}).get("refresh_token") for r in fake.token_requests("refresh_token")}
        assert len(used) == 1
        assert len(fake.token_requests("password")) == 1


def test_hub_seeded_refresh_token() -> None:
    """A Hub refresh token alone keeps the provider alive."""
    fake = FakeHub(ttl=TTL)
    seed = fake.seed_refresh_token(hub.DEMO_LOGIN)
    config = HUB_SERVICE + f"refresh_token: {seed}\n"
    with broker_for(fake, config) as (client, _):
        watch_refreshes(client, fake, grant="refresh_token", count=2)
        assert all((r.form or {}).get("refresh_token") == seed for r in fake.token_requests())


OAUTH2 = """
type: oauth2
token_url: "{url}/oauth/token"
client_id: app
client_secret: app-secret
"""


@pytest.mark.parametrize("client_auth", ["client_secret_basic", "client_secret_post"])
def test_generic_client_credentials_with_audience_scope_and_headers(client_auth: str) -> None:
    """Client auth either way; scope, audience, extra params and headers reach the server."""
    fake = FakeOAuth2(
        clients={"app": "app-secret"},
        ttl=TTL,
        client_auth=client_auth,  # type: ignore[arg-type]  # the fake's Literal
        required_params={"audience": "https://api.example", "resource": "r1"},
        required_headers={"x-tenant": "blue"},
    )
    config = OAUTH2 + (
        f"grant: client_credentials\nclient_auth: {client_auth}\nscope: read write\n"
        "audience: https://api.example\nextra_params: {resource: r1}\n"
        "headers: {X-Tenant: blue}\n"
    )
    with broker_for(fake, config) as (client, _):
        watch_refreshes(client, fake, grant="client_credentials", count=2)
        form = fake.token_requests()[0].form or {}
        assert form.get("scope") == "read write"


def test_generic_password_grant_with_rotation() -> None:
    """password grant, then refresh_token grants with each rotated refresh token."""
    fake = FakeOAuth2(
        clients={"app": "app-secret"},
        users={"alice": "alice-pw"},
        ttl=TTL,
        rotate_refresh_tokens=True,
        revoke_rotated_refresh_tokens=True,
    )
    config = OAUTH2 + "grant: password\nusername: alice\npassword: alice-pw\n"
    with broker_for(fake, config) as (client, _):
        watch_refreshes(client, fake, grant="refresh_token", count=3)
        assert len(fake.token_requests("password")) == 1


def test_generic_missing_expires_in_uses_default_lifetime() -> None:
    """No expires_in: the configured default lifetime drives the refresh schedule."""
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=TTL, include_expires_in=False)
    config = OAUTH2 + "grant: client_credentials\ndefault_expires_in: 2\n"
    with broker_for(fake, config) as (client, _):
        body = client.get("/token/p").json()
        assert body["expires_in"] <= 2
        watch_refreshes(client, fake, grant="client_credentials", count=3)
