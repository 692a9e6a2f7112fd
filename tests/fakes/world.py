"""Per-fake login and refresh flows for the wider-world tests (``test_world_*.py``).

A :class:`Flow` knows how to log in to one fake with its demo credentials, how to redeem a
refresh token, and what a refused refresh looks like, so one test body covers every fake.
HIRO has two flows: the JSON ``/app`` + ``/refresh`` pair and the 6.6 form ``/token``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from broker.fakes import (
    FakeAerion,
    FakeHiro,
    FakeHub,
    FakeOAuth2,
    FakeProvider,
    aerion,
    hiro,
    hub,
    oauth2,
)
from tests.fakes.helpers import basic

HIRO_CREDS = {"client_id": hiro.DEMO_CLIENT_ID, "client_secret": hiro.DEMO_CLIENT_SECRET}
AERION_CREDS = {"client_id": aerion.DEMO_CLIENT_ID, "client_secret": aerion.DEMO_CLIENT_SECRET}
AERION_TENANT = {"Origin": "https://acme.aerion.app"}
HUB_AUTH = {"Authorization": basic(hub.DEMO_SERVICE_ID, hub.DEMO_SERVICE_SECRET)}
OAUTH2_AUTH = {"Authorization": basic(oauth2.DEMO_CLIENT_ID, oauth2.DEMO_CLIENT_SECRET)}


@dataclass(frozen=True)
class Flow:
    """One fake and one way of logging in and refreshing on it.

    ``tokens`` reads (access token, refresh token or None) from a successful answer; ``seed``
    mints a refresh token for the demo user out of band;
    ``keep_rotated`` are the fake's own options that leave a rotated-away refresh token valid
    (``None``: the fake never rotates); ``refused`` is the status of a refused refresh.
    """

    name: str
    make: Callable[..., FakeProvider]
    login_request: Callable[[httpx.Client], httpx.Response]
    refresh_request: Callable[[httpx.Client, str], httpx.Response]
    tokens: Callable[[httpx.Response], tuple[str, str | None]]
    me_path: str
    seed: Callable[[Any], str]
    refused: int
    keep_rotated: dict[str, Any] | None = field(default_factory=dict)

    def login(self, client: httpx.Client) -> tuple[str, str]:
        response = self.login_request(client)
        assert response.status_code == 200, response.text
        access, refresh = self.tokens(response)
        assert refresh is not None
        return access, refresh

    def refresh(self, client: httpx.Client, refresh_token: str) -> tuple[str, str]:
        """Redeem ``refresh_token``; the refresh token to use next (itself if not rotated)."""
        response = self.refresh_request(client, refresh_token)
        assert response.status_code == 200, response.text
        access, new = self.tokens(response)
        return access, new or refresh_token

    def me(self, client: httpx.Client, access: str) -> int:
        return client.get(self.me_path, headers={"Authorization": f"Bearer {access}"}).status_code


def _oauth_tokens(response: httpx.Response) -> tuple[str, str | None]:
    body = response.json()
    return body["access_token"], body.get("refresh_token")


def _hiro_session_tokens(response: httpx.Response) -> tuple[str, str | None]:
    body = response.json()
    return body["_TOKEN"], body["refresh_token"]


def _hiro_app(client: httpx.Client) -> httpx.Response:
    login = {"username": hiro.DEMO_USERNAME, "password": hiro.DEMO_PASSWORD, **HIRO_CREDS}
    return client.post("/api/auth/6/app", json=login)


def _hiro_refresh(client: httpx.Client, rt: str) -> httpx.Response:
    return client.post("/api/auth/6/refresh", json={"refresh_token": rt, **HIRO_CREDS})


def _hiro_token_login(client: httpx.Client) -> httpx.Response:
    form = {"grant_type": "password", "username": hiro.DEMO_USERNAME}
    form |= {"password": hiro.DEMO_PASSWORD, **HIRO_CREDS}
    return client.post("/api/auth/6.6/token", data=form)


def _hiro_token_refresh(client: httpx.Client, rt: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": rt, **HIRO_CREDS}
    return client.post("/api/auth/6.6/token", data=form)


def _aerion_login(client: httpx.Client) -> httpx.Response:
    form = {"grant_type": "password", "username": aerion.DEMO_EMAIL}
    form |= {"password": aerion.DEMO_PASSWORD, **AERION_CREDS}
    return client.post("/oauth2/token", data=form, headers=AERION_TENANT)


def _aerion_refresh(client: httpx.Client, rt: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": rt, **AERION_CREDS}
    return client.post("/oauth2/token", data=form, headers=AERION_TENANT)


def _hub_login(client: httpx.Client) -> httpx.Response:
    form = {"grant_type": "password", "username": hub.DEMO_LOGIN, "password": hub.DEMO_PASSWORD}
    form |= {"scope": hub.HUB_SERVICE_ID, "access_type": "offline"}
    return client.post("/api/rest/oauth2/token", data=form, headers=HUB_AUTH)


def _hub_refresh(client: httpx.Client, rt: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": rt}
    return client.post("/api/rest/oauth2/token", data=form, headers=HUB_AUTH)


def oauth2_token_url(client: httpx.Client) -> str:
    """The token endpoint as an RFC 8414 client finds it: it moves with token-path options."""
    metadata = client.get("/.well-known/oauth-authorization-server").json()
    return str(metadata["token_endpoint"])


def _oauth2_login(client: httpx.Client) -> httpx.Response:
    form = {"grant_type": "password", "username": oauth2.DEMO_USERNAME}
    form |= {"password": oauth2.DEMO_PASSWORD}
    return client.post(oauth2_token_url(client), data=form, headers=OAUTH2_AUTH)


def _oauth2_refresh(client: httpx.Client, rt: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": rt}
    return client.post(oauth2_token_url(client), data=form, headers=OAUTH2_AUTH)


FLOWS = [
    Flow(
        "hiro-app",
        FakeHiro,
        _hiro_app,
        _hiro_refresh,
        _hiro_session_tokens,
        "/api/auth/6/me/account",
        lambda fake: fake.seed_refresh_token(hiro.DEMO_USERNAME),
        refused=401,
        keep_rotated={"old_refresh_token_valid_after_rotation": True},
    ),
    Flow(
        "hiro-token",
        FakeHiro,
        _hiro_token_login,
        _hiro_token_refresh,
        _oauth_tokens,
        "/api/auth/6.6/me/account",
        lambda fake: fake.seed_refresh_token(hiro.DEMO_USERNAME),
        refused=401,
        keep_rotated={"old_refresh_token_valid_after_rotation": True},
    ),
    Flow(
        "aerion",
        FakeAerion,
        _aerion_login,
        _aerion_refresh,
        _oauth_tokens,
        "/v1/users/me",
        lambda fake: fake.seed_refresh_token(aerion.DEMO_EMAIL, tenant=aerion.DEMO_TENANT),
        refused=400,
        keep_rotated={"revoke_old_refresh_token": False},
    ),
    Flow(
        "hub",
        FakeHub,
        _hub_login,
        _hub_refresh,
        _oauth_tokens,
        "/api/rest/users/me",
        lambda fake: fake.seed_refresh_token(hub.DEMO_LOGIN),
        refused=400,
        keep_rotated=None,
    ),
    Flow(
        "oauth2",
        FakeOAuth2,
        _oauth2_login,
        _oauth2_refresh,
        _oauth_tokens,
        "/userinfo",
        lambda fake: fake.seed_refresh_token(oauth2.DEMO_USERNAME),
        refused=400,
        keep_rotated={"revoke_rotated_refresh_tokens": False},
    ),
]
ROTATING = [flow for flow in FLOWS if flow.keep_rotated is not None]
