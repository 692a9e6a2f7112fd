"""FakeHiro speaks HIRO Auth API 6 / 6.6 as protocol doc §1 and checklist §5.1 describe."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from broker.fakes.hiro import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_PASSWORD,
    DEMO_USERNAME,
    FakeHiro,
)
from broker.fakes.hiro_tokens import decode_payload
from tests.fakes.helpers import Clock, Connect, basic

AUTH = "/api/auth/6"
LOGIN = {
    "client_id": DEMO_CLIENT_ID,
    "client_secret": DEMO_CLIENT_SECRET,
    "username": DEMO_USERNAME,
    "password": DEMO_PASSWORD,
}
SESSION_KEYS = {
    "_TOKEN",
    "_APPLICATION",
    "_IDENTITY",
    "_IDENTITY_ID",
    "expires-at",
    "refresh_token",
    "type",
}


def login(client: httpx.Client) -> dict[str, Any]:
    response = client.post(f"{AUTH}/app", json=LOGIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refresh(client: httpx.Client, rt: str, secret: str = DEMO_CLIENT_SECRET) -> httpx.Response:
    payload = {"client_id": DEMO_CLIENT_ID, "client_secret": secret, "refresh_token": rt}
    return client.post(f"{AUTH}/refresh", json=payload)


def assert_hiro_error(response: httpx.Response, status: int, code: int | None = None) -> None:
    assert status == response.status_code
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert (code or status) == error["code"]


@pytest.mark.parametrize("version", ["6", "6.6"])
def test_api_version_advertises_the_auth_endpoint(connect: Connect, version: str) -> None:
    """GET /api/version (no auth) names the auth prefix and version, as the clients expect."""
    client = connect(FakeHiro(auth_version=version).app)
    response = client.get("/api/version")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    auth = response.json()["auth"]
    assert f"/api/auth/{version}/" == auth["endpoint"]
    assert version == auth["version"]


def test_app_login_response_shape_and_types(connect: Connect, clock: Clock) -> None:
    """/app answers the 7 documented fields; expires-at is an int in ms; _TOKEN is a JWT."""
    fake = FakeHiro(ttl=1.5, now=clock)
    client = connect(fake.app)
    extra = {"grant_type": "password", "organization": "acme", "organization_id": "x"}
    response = client.post(f"{AUTH}/app", json={**LOGIN, **extra})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == SESSION_KEYS
    assert int((clock.t + 1.5) * 1000) == body["expires-at"]
    assert isinstance(body["expires-at"], int)
    assert body["type"] == "Bearer"
    assert body["_APPLICATION"] == DEMO_CLIENT_ID
    assert body["_IDENTITY"] == DEMO_USERNAME
    assert fake.identity_id(DEMO_USERNAME) == body["_IDENTITY_ID"]
    assert [body["_TOKEN"]] == fake.issued_access_tokens
    assert [body["refresh_token"]] == fake.issued_refresh_tokens


def test_token_payload_has_the_documented_layout(connect: Connect, clock: Clock) -> None:
    """The _TOKEN payload: exp/iat in seconds, data{...} with ms timestamps (doc §1.2)."""
    fake = FakeHiro(ttl=600, now=clock)
    token = login(connect(fake.app))["_TOKEN"]
    assert len(token.split(".")) == 3
    payload = decode_payload(token)
    assert int(clock.t) + 600 == payload["exp"]
    assert int(clock.t) == payload["iat"]
    assert payload["aud"] == DEMO_CLIENT_ID
    data = payload["data"]
    assert {
        "teams",
        "default-scope",
        "organization",
        "_APPLICATION",
        "_IDENTITY_ID",
        "_IDENTITY",
        "expires-at",
        "created-on",
        "default-team",
    } == set(data)
    assert int((clock.t + 600) * 1000) == data["expires-at"]
    assert int(clock.t * 1000) == data["created-on"]
    assert data["_IDENTITY"] == DEMO_USERNAME


@pytest.mark.parametrize(
    "path",
    [
        "/api/auth/6/app",
        "/api/auth/6.6/app",
        "/api/6/auth/app",
        "/api/auth/6/app/",
        "/api/auth/7.0/app",
    ],
)
def test_app_is_served_under_every_prefix(connect: Connect, path: str) -> None:
    """The configured prefix, /api/auth/6, /api/auth/6.6, legacy /api/6/auth, trailing slash."""
    client = connect(FakeHiro(auth_version="7.0").app)
    assert client.post(path, json=LOGIN).status_code == 200


@pytest.mark.parametrize(
    "override",
    [{"password": "wrong"}, {"username": "nobody@example.com"}, {"client_secret": "wrong"}],
)
def test_app_bad_credentials_is_401_with_hiro_error(
    connect: Connect, override: dict[str, str]
) -> None:
    """Wrong user, password or client secret: HTTP 401, {"error": {"message", "code": 401}}."""
    fake = FakeHiro()
    response = connect(fake.app).post(f"{AUTH}/app", json={**LOGIN, **override})
    assert_hiro_error(response, 401)
    assert fake.issued_access_tokens == []


def test_legacy_error_codes_wrap_invalid_grant_in_code_400(connect: Connect) -> None:
    """graph_conn's mock: HTTP 401 but inner code 400 and a wrapped invalid_grant message."""
    response = connect(FakeHiro(legacy_error_codes=True).app).post(
        f"{AUTH}/app", json={**LOGIN, "password": "wrong"}
    )
    assert_hiro_error(response, 401, code=400)
    assert '"error":"invalid_grant"' in response.json()["error"]["message"]


def test_refresh_rotates_and_revokes_the_old_refresh_token(connect: Connect) -> None:
    """6.6: every refresh returns a new refresh token; the previous one then gets 401."""
    fake = FakeHiro()
    client = connect(fake.app)
    first = login(client)
    response = refresh(client, first["refresh_token"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    second = response.json()
    assert set(second) == SESSION_KEYS
    assert second["refresh_token"] != first["refresh_token"]
    assert second["_TOKEN"] != first["_TOKEN"]
    assert_hiro_error(refresh(client, first["refresh_token"]), 401)
    assert refresh(client, second["refresh_token"]).status_code == 200


def test_old_refresh_token_may_stay_valid_after_rotation(connect: Connect) -> None:
    """old_refresh_token_valid_after_rotation=True keeps the previous token usable."""
    fake = FakeHiro(old_refresh_token_valid_after_rotation=True)
    client = connect(fake.app)
    first = login(client)
    assert refresh(client, first["refresh_token"]).status_code == 200
    assert refresh(client, first["refresh_token"]).status_code == 200
    assert fake.is_refresh_token_valid(first["refresh_token"])


def test_without_rotation_the_same_refresh_token_comes_back(connect: Connect) -> None:
    """Pre-6.6: the refresh token is returned unchanged and keeps working."""
    fake = FakeHiro(rotate_refresh_tokens=False)
    client = connect(fake.app)
    rt = login(client)["refresh_token"]
    for _ in range(2):
        response = refresh(client, rt)
        assert response.status_code == 200
        assert rt == response.json()["refresh_token"]
    assert [rt] == fake.issued_refresh_tokens


def test_without_rotation_a_dying_refresh_token_is_replaced(connect: Connect, clock: Clock) -> None:
    """Pre-6.6: "the same unless it would expire before current access_token"."""
    fake = FakeHiro(rotate_refresh_tokens=False, ttl=60, refresh_token_ttl=100, now=clock)
    client = connect(fake.app)
    rt = login(client)["refresh_token"]
    assert rt == refresh(client, rt).json()["refresh_token"]
    clock.advance(50)  # the refresh token now dies 50 s from now, before a 60 s access token
    replaced = refresh(client, rt).json()["refresh_token"]
    assert replaced != rt
    assert fake.is_refresh_token_valid(replaced)


@pytest.mark.parametrize("case", ["unknown", "revoked", "expired", "wrong-secret", "other-client"])
def test_dead_refresh_token_is_401(connect: Connect, clock: Clock, case: str) -> None:
    """Unknown, revoked, expired, foreign refresh tokens or a bad client: HTTP 401."""
    other = "cother0client_cother0client"
    fake = FakeHiro(
        refresh_token_ttl=30,
        clients={DEMO_CLIENT_ID: DEMO_CLIENT_SECRET, other: "s"},
        now=clock,
    )
    client = connect(fake.app)
    rt = login(client)["refresh_token"]
    secret = DEMO_CLIENT_SECRET
    if case == "unknown":
        rt = "not-a-refresh-token"
    elif case == "revoked":
        fake.revoke_refresh_token(rt)
    elif case == "expired":
        clock.advance(30)
    elif case == "wrong-secret":
        secret = "wrong"
    else:
        rt = fake.seed_refresh_token(DEMO_USERNAME, client_id=other)
    assert_hiro_error(refresh(client, rt, secret), 401)


@pytest.mark.parametrize("via", ["basic", "body"])
def test_token_endpoint_password_grant(connect: Connect, via: str) -> None:
    """6.6 /token: client via Basic or body; expires_in is the string "3600" by default."""
    fake = FakeHiro(auth_version="6.6")
    client = connect(fake.app)
    form = {"grant_type": "password", "username": DEMO_USERNAME, "password": DEMO_PASSWORD}
    headers = {}
    if via == "basic":
        headers["Authorization"] = basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
    else:
        form |= {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET}
    response = client.post("/api/auth/6.6/token", data=form, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["access_token", "expires_in", "token_type", "refresh_token"]
    assert body["expires_in"] == "3600"
    assert body["token_type"] == "Bearer"
    assert [body["access_token"]] == fake.issued_access_tokens
    assert [r.form["grant_type"] for r in fake.token_requests("password") if r.form] == ["password"]


def test_token_endpoint_numeric_expires_in_and_refresh(connect: Connect) -> None:
    """expires_in_as_string=False sends a number; grant_type=refresh_token rotates."""
    fake = FakeHiro(expires_in_as_string=False, ttl=90)
    client = connect(fake.app)
    auth = {"Authorization": basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)}
    form = {"grant_type": "password", "username": DEMO_USERNAME, "password": DEMO_PASSWORD}
    first = client.post(f"{AUTH}/token", data=form, headers=auth).json()
    assert first["expires_in"] == 90
    form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    second = client.post(f"{AUTH}/token", data=form, headers=auth)
    assert second.status_code == 200
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert len(fake.token_requests("refresh_token")) == 1


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"grant_type": "password", "username": DEMO_USERNAME, "password": "x"}, 401),
        ({"grant_type": "refresh_token", "refresh_token": "unknown"}, 401),
        ({"grant_type": "client_credentials"}, 400),
    ],
)
def test_token_endpoint_errors(connect: Connect, form: dict[str, str], status: int) -> None:
    """Bad credentials and dead refresh tokens are 401; unsupported grants 400."""
    client = connect(FakeHiro().app)
    auth = {"Authorization": basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)}
    assert_hiro_error(client.post(f"{AUTH}/token", data=form, headers=auth), status)


def test_token_endpoint_bad_client_is_401(connect: Connect) -> None:
    """A wrong client secret on /token: 401."""
    client = connect(FakeHiro().app)
    form = {"grant_type": "password", "username": DEMO_USERNAME, "password": DEMO_PASSWORD}
    auth = {"Authorization": basic(DEMO_CLIENT_ID, "wrong")}
    assert_hiro_error(client.post(f"{AUTH}/token", data=form, headers=auth), 401)


@pytest.mark.parametrize(
    "shape",
    [
        lambda rt, at: {"token": rt, "token_hint": "refresh_token"},
        lambda rt, at: {"token": rt, "token_hint": "access_token"},  # Java client's mix-up
        lambda rt, at: {"refresh_token": rt},  # auth < 6.6
    ],
)
def test_revoke_accepts_both_body_shapes(connect: Connect, shape: Any) -> None:
    """/revoke answers 200 {} and kills the refresh token, whatever the hint says."""
    fake = FakeHiro()
    client = connect(fake.app)
    session = login(client)
    body = {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET}
    body |= shape(session["refresh_token"], session["_TOKEN"])
    response = client.post(f"{AUTH}/revoke", json=body)
    assert response.status_code == 200
    assert response.json() == {}
    assert not fake.is_refresh_token_valid(session["refresh_token"])
    assert_hiro_error(refresh(client, session["refresh_token"]), 401)


def test_revoke_access_token_and_unknown_token(connect: Connect) -> None:
    """Revoking an access token kills it; an unknown token still gets 200."""
    fake = FakeHiro()
    client = connect(fake.app)
    token = login(client)["_TOKEN"]
    body = {"client_id": DEMO_CLIENT_ID, "token": token, "token_hint": "access_token"}
    assert client.post(f"{AUTH}/revoke", json=body).status_code == 200
    assert not fake.is_access_token_valid(token)
    unknown = {"client_id": DEMO_CLIENT_ID, "token": "nope"}
    assert client.post(f"{AUTH}/revoke", json=unknown).status_code == 200


def test_me_account_accepts_a_live_token_until_exactly_expires_at(
    connect: Connect, clock: Clock
) -> None:
    """/me/account: 200 vertex while valid, 401 from expires-at on."""
    fake = FakeHiro(ttl=1.5, now=clock)
    client = connect(fake.app)
    token = login(client)["_TOKEN"]
    headers = {"Authorization": f"Bearer {token}"}
    response = client.get(f"{AUTH}/me/account", params={"profile": "true"}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    vertex = response.json()
    assert vertex["ogit/_type"] == "ogit/Auth/Account"
    assert fake.identity_id(DEMO_USERNAME) == vertex["ogit/_id"]
    assert vertex["ogit/name"] == DEMO_USERNAME
    clock.advance(1.499)
    assert client.get(f"{AUTH}/me/account", headers=headers).status_code == 200
    clock.advance(0.001)
    assert_hiro_error(client.get(f"{AUTH}/me/account", headers=headers), 401)
    assert not fake.is_access_token_valid(token)


@pytest.mark.parametrize("authorization", [None, "Bearer garbage", "Basic abc"])
def test_me_account_without_valid_bearer_is_401(
    connect: Connect, authorization: str | None
) -> None:
    """No, unknown or non-Bearer credentials: 401 with a HIRO error body."""
    client = connect(FakeHiro().app)
    headers = {"Authorization": authorization} if authorization else {}
    assert_hiro_error(client.get(f"{AUTH}/me/account", headers=headers), 401)


def test_token_requests_classify_app_and_refresh(connect: Connect) -> None:
    """/app counts as "password", /refresh as "refresh_token"; /me is not a token request."""
    fake = FakeHiro()
    client = connect(fake.app)
    session = login(client)
    refresh(client, session["refresh_token"])
    client.get(f"{AUTH}/me/account", headers={"Authorization": f"Bearer {session['_TOKEN']}"})
    assert [f"{AUTH}/app"] == [r.path for r in fake.token_requests("password")]
    assert [f"{AUTH}/refresh"] == [r.path for r in fake.token_requests("refresh_token")]
    assert len(fake.token_requests()) == 2
    assert len(fake.requests) == 3
    assert fake.token_requests("password")[0].json == LOGIN


def test_fail_next_sends_the_hiro_error_body(connect: Connect) -> None:
    """fail_next(2, 503): two canned HIRO errors, then normal service."""
    fake = FakeHiro()
    client = connect(fake.app)
    fake.fail_next(2, 503)
    for _ in range(2):
        assert_hiro_error(client.post(f"{AUTH}/app", json=LOGIN), 503)
    assert client.post(f"{AUTH}/app", json=LOGIN).status_code == 200
    assert len(fake.token_requests("password")) == 3
    assert len(fake.issued_access_tokens) == 1


def test_wrong_method_is_a_json_405(connect: Connect) -> None:
    """Even framework errors use HIRO's JSON error body."""
    response = connect(FakeHiro().app).get(f"{AUTH}/app")
    assert_hiro_error(response, 405)
    assert response.json()["error"]["message"] == "Method Not Allowed"
