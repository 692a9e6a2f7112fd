"""FakeOAuth2 follows the RFC 6749 / 6750 / 7009 baseline of protocol doc §0."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest

from broker.fakes.oauth2 import FakeOAuth2
from tests.fakes.helpers import Clock, Connect, basic

CLIENTS = {"app": "app-secret", "we:ird id": "p@ss word+"}
USERS = {"alice": "alice-pw"}
BASIC = {"Authorization": basic("app", "app-secret")}


def fake(**kwargs: Any) -> FakeOAuth2:
    return FakeOAuth2(clients=CLIENTS, users=USERS, **kwargs)


def post_token(
    client: httpx.Client,
    form: dict[str, str],
    headers: dict[str, str] | None = None,
    path: str = "/oauth/token",
) -> httpx.Response:
    return client.post(path, data=form, headers=BASIC if headers is None else headers)


def assert_error(response: httpx.Response, error: str, status: int = 400) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error


def test_client_credentials_success_per_rfc_5_1(connect: Connect) -> None:
    """200 JSON, no-store, Bearer, numeric expires_in, scope echoed, no refresh token."""
    f = fake(ttl=1.5)
    response = post_token(connect(f.app), {"grant_type": "client_credentials", "scope": "a b"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body == {
        "access_token": f.issued_access_tokens[0],
        "token_type": "Bearer",
        "expires_in": 1,
        "scope": "a b",
    }


def test_basic_credentials_are_form_decoded(connect: Connect) -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before base64."""
    raw = f"{quote_plus('we:ird id')}:{quote_plus('p@ss word+')}"
    headers = {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
    response = post_token(connect(fake().app), {"grant_type": "client_credentials"}, headers)
    assert response.status_code == 200


def test_body_credentials(connect: Connect) -> None:
    """client_secret_post is accepted with client_auth="any"."""
    form = {"grant_type": "client_credentials", "client_id": "app", "client_secret": "app-secret"}
    assert post_token(connect(fake().app), form, {}).status_code == 200


@pytest.mark.parametrize(
    ("client_auth", "via", "status"),
    [
        ("client_secret_basic", "basic", 200),
        ("client_secret_basic", "body", 400),
        ("client_secret_post", "body", 200),
        ("client_secret_post", "basic", 401),
    ],
)
def test_client_auth_method_is_enforced(
    connect: Connect, client_auth: Any, via: str, status: int
) -> None:
    """A method other than the configured one is invalid_client."""
    form = {"grant_type": "client_credentials"}
    headers = BASIC if via == "basic" else {}
    if via == "body":
        form |= {"client_id": "app", "client_secret": "app-secret"}
    response = post_token(connect(fake(client_auth=client_auth).app), form, headers)
    assert response.status_code == status
    if status != 200:
        assert_error(response, "invalid_client", status)


def test_two_client_auth_methods_is_invalid_request(connect: Connect) -> None:
    """§2.3.1: "MUST NOT use more than one authentication method in each request"."""
    form = {"grant_type": "client_credentials", "client_id": "app", "client_secret": "app-secret"}
    assert_error(post_token(connect(fake().app), form), "invalid_request")


@pytest.mark.parametrize("via", ["basic", "body", "none"])
def test_invalid_client(connect: Connect, via: str) -> None:
    """Basic → 401 + WWW-Authenticate; body or no credentials → 400 (RFC 6749 §5.2)."""
    form = {"grant_type": "client_credentials"}
    headers: dict[str, str] = {}
    if via == "basic":
        headers = {"Authorization": basic("app", "wrong")}
    elif via == "body":
        form |= {"client_id": "app", "client_secret": "wrong"}
    response = post_token(connect(fake().app), form, headers)
    assert_error(response, "invalid_client", 401 if via == "basic" else 400)
    assert ("www-authenticate" in response.headers) == (via == "basic")


def test_password_then_refresh_rotates(connect: Connect) -> None:
    """Password grant issues a refresh token; refresh rotates it and revokes the old one."""
    f = fake()
    client = connect(f.app)
    form = {"grant_type": "password", "username": "alice", "password": "alice-pw"}
    first = post_token(client, form).json()
    assert set(first) == {"access_token", "token_type", "expires_in", "refresh_token"}
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    second = post_token(client, refresh).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert_error(post_token(client, refresh), "invalid_grant")
    assert [len(f.token_requests(g)) for g in ("password", "refresh_token")] == [1, 2]


def test_refresh_without_rotation(connect: Connect) -> None:
    """rotate_refresh_tokens=False: no refresh_token in the response, the old one still works."""
    f = fake(rotate_refresh_tokens=False)
    client = connect(f.app)
    rt = f.seed_refresh_token("alice", client_id="app")
    for _ in range(2):
        body = post_token(client, {"grant_type": "refresh_token", "refresh_token": rt}).json()
        assert "refresh_token" not in body
    assert f.is_refresh_token_valid(rt)


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password", "username": "alice", "password": "x"}, "invalid_grant"),
        ({"grant_type": "password", "username": "alice"}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "nope"}, "invalid_grant"),
        ({"grant_type": "authorization_code", "code": "c"}, "invalid_grant"),
        ({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}, "unsupported_grant_type"),
        ({}, "invalid_request"),
    ],
)
def test_grant_errors(connect: Connect, form: dict[str, str], error: str) -> None:
    """RFC 6749 §5.2 error codes with status 400."""
    assert_error(post_token(connect(fake().app), form), error)


def test_refresh_token_of_another_client_and_wider_scope(connect: Connect) -> None:
    """A refresh token is bound to its client and cannot widen its scope."""
    f = fake()
    client = connect(f.app)
    rt = f.seed_refresh_token("alice", client_id="we:ird id", scope=("read",))
    assert_error(
        post_token(client, {"grant_type": "refresh_token", "refresh_token": rt}), "invalid_grant"
    )
    mine = f.seed_refresh_token("alice", client_id="app", scope=("read",))
    wider = {"grant_type": "refresh_token", "refresh_token": mine, "scope": "read write"}
    assert_error(post_token(client, wider), "invalid_scope")


def test_non_form_body_is_invalid_request(connect: Connect) -> None:
    """The token endpoint only takes application/x-www-form-urlencoded."""
    response = connect(fake().app).post(
        "/oauth/token", json={"grant_type": "client_credentials"}, headers=BASIC
    )
    assert_error(response, "invalid_request")


def test_required_params_and_headers(connect: Connect) -> None:
    """Missing or different audience / header: invalid_request; exact values succeed."""
    f = fake(required_params={"audience": "https://api"}, required_headers={"X-Tenant": "blue"})
    client = connect(f.app)
    form = {"grant_type": "client_credentials", "audience": "https://api"}
    assert_error(post_token(client, form), "invalid_request")
    headers = {**BASIC, "X-Tenant": "blue"}
    assert_error(post_token(client, {**form, "audience": "other"}, headers), "invalid_request")
    assert post_token(client, form, headers).status_code == 200


def test_expires_in_can_be_omitted_and_token_path_moved(connect: Connect) -> None:
    """include_expires_in=False omits it; token_path moves the endpoint."""
    f = fake(include_expires_in=False, token_path="/connect/token")
    response = post_token(
        connect(f.app), {"grant_type": "client_credentials"}, path="/connect/token"
    )
    assert response.status_code == 200
    assert "expires_in" not in response.json()


def test_userinfo_and_rfc6750_errors(connect: Connect, clock: Clock) -> None:
    """/userinfo and /me: 200 while valid; 401 + WWW-Authenticate error="invalid_token" after."""
    f = fake(ttl=2, now=clock)
    client = connect(f.app)
    access = post_token(client, {"grant_type": "client_credentials"}).json()["access_token"]
    bearer = {"Authorization": f"Bearer {access}"}
    for path in ("/userinfo", "/me"):
        body = client.get(path, headers=bearer).json()
        assert body["sub"] == "app"
    clock.advance(2)
    response = client.get("/userinfo", headers=bearer)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["error"] == "invalid_token"
    anonymous = client.get("/me")
    assert anonymous.status_code == 401
    assert "error=" not in anonymous.headers["www-authenticate"]


def test_revocation_rfc7009(connect: Connect) -> None:
    """POST /oauth/revoke kills the token; unknown tokens still get 200."""
    f = fake()
    client = connect(f.app)
    rt = f.seed_refresh_token("alice", client_id="app")
    assert client.post("/oauth/revoke", data={"token": rt}, headers=BASIC).status_code == 200
    assert not f.is_refresh_token_valid(rt)
    assert client.post("/oauth/revoke", data={"token": "x"}, headers=BASIC).status_code == 200


def test_metadata(connect: Connect) -> None:
    """RFC 8414 metadata names the token endpoint."""
    client = connect(fake().app)
    doc = client.get("/.well-known/oauth-authorization-server").json()
    assert doc["token_endpoint"] == str(client.base_url).rstrip("/") + "/oauth/token"
