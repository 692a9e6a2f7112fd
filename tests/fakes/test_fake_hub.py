"""FakeHub speaks JetBrains Hub OAuth 2.0 as protocol doc §3 and checklist §5.3 describe."""

from __future__ import annotations

import httpx
import pytest

from broker.fakes.hub import (
    DEMO_LOGIN,
    DEMO_PASSWORD,
    DEMO_SERVICE_ID,
    DEMO_SERVICE_SECRET,
    HUB_SERVICE_ID,
    YOUTRACK_SERVICE_ID,
    FakeHub,
    HubService,
)
from tests.fakes.helpers import Clock, Connect, basic

TOKEN = "/api/rest/oauth2/token"
AUTH = {"Authorization": basic(DEMO_SERVICE_ID, DEMO_SERVICE_SECRET)}
HUB_JSON = "application/json;charset=UTF-8"
OFFLINE = {
    "grant_type": "password",
    "username": DEMO_LOGIN,
    "password": DEMO_PASSWORD,
    "scope": HUB_SERVICE_ID,
    "access_type": "offline",
}


def post_token(
    client: httpx.Client, form: dict[str, str], headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(TOKEN, data=form, headers=AUTH if headers is None else headers)


def assert_oauth_error(response: httpx.Response, error: str, status: int = 400) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == HUB_JSON
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert isinstance(body["error_description"], str)


def test_client_credentials_response(connect: Connect) -> None:
    """Trusted service: {access_token, token_type, expires_in: int, scope: str}, no refresh."""
    fake = FakeHub(ttl=1.5)
    form = {"grant_type": "client_credentials", "scope": f"{HUB_SERVICE_ID} {YOUTRACK_SERVICE_ID}"}
    response = post_token(connect(fake.app), form)
    assert response.status_code == 200
    assert response.headers["content-type"] == HUB_JSON
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1
    assert body["scope"] == f"{HUB_SERVICE_ID} {YOUTRACK_SERVICE_ID}"
    assert fake.issued_access_tokens == [body["access_token"]]
    assert fake.issued_refresh_tokens == []


def test_client_credentials_scope_is_optional_and_names_resolve(connect: Connect) -> None:
    """No scope → Hub itself; "YouTrack" resolves to its service id."""
    client = connect(FakeHub().app)
    assert post_token(client, {"grant_type": "client_credentials"}).json()["scope"] == "0-0-0-0-0"
    form = {"grant_type": "client_credentials", "scope": "YouTrack"}
    assert post_token(client, form).json()["scope"] == YOUTRACK_SERVICE_ID


@pytest.mark.parametrize(
    ("service", "error"),
    [
        (HubService("s1", "pw", trusted=False), "unauthorized_client"),
        (HubService("s1", "pw", client_credentials_enabled=False), "unauthorized_client"),
    ],
)
def test_client_credentials_needs_a_trusted_enabled_service(
    connect: Connect, service: HubService, error: str
) -> None:
    """Untrusted services or a disabled flow: unauthorized_client."""
    client = connect(FakeHub(services={"s1": service}).app)
    response = post_token(
        client, {"grant_type": "client_credentials"}, {"Authorization": basic("s1", "pw")}
    )
    assert_oauth_error(response, error)


def test_password_offline_adds_refresh_token(connect: Connect) -> None:
    """access_type=offline → refresh_token; without it, none."""
    fake = FakeHub()
    client = connect(fake.app)
    body = post_token(client, OFFLINE).json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "refresh_token"}
    assert fake.issued_refresh_tokens == [body["refresh_token"]]
    online = {k: v for k, v in OFFLINE.items() if k != "access_type"}
    assert "refresh_token" not in post_token(client, online).json()


def test_password_wrong_credentials(connect: Connect) -> None:
    """invalid_grant "Invalid resource owner credentials" (as seen in the wild)."""
    response = post_token(connect(FakeHub().app), {**OFFLINE, "password": "wrong"})
    assert_oauth_error(response, "invalid_grant")
    assert response.json()["error_description"] == "Invalid resource owner credentials"


def test_password_scope_can_be_required(connect: Connect) -> None:
    """require_scope_for_password=True follows the docs' "Required" strictly."""
    form = {k: v for k, v in OFFLINE.items() if k != "scope"}
    assert post_token(connect(FakeHub().app), form).status_code == 200
    strict = FakeHub(require_scope_for_password=True)
    assert_oauth_error(post_token(connect(strict.app), form), "invalid_request")


def test_refresh_does_not_rotate(connect: Connect) -> None:
    """Refresh omits refresh_token and the same refresh token keeps working."""
    fake = FakeHub()
    client = connect(fake.app)
    rt = post_token(client, OFFLINE).json()["refresh_token"]
    for _ in range(2):
        response = post_token(client, {"grant_type": "refresh_token", "refresh_token": rt})
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
        assert body["scope"] == HUB_SERVICE_ID
    assert fake.issued_refresh_tokens == [rt]
    assert fake.is_refresh_token_valid(rt)
    assert len(fake.issued_access_tokens) == 3


def test_refresh_can_echo_the_refresh_token(connect: Connect) -> None:
    """echo_refresh_token_on_refresh=True sends the same token back."""
    fake = FakeHub(echo_refresh_token_on_refresh=True)
    client = connect(fake.app)
    rt = post_token(client, OFFLINE).json()["refresh_token"]
    body = post_token(client, {"grant_type": "refresh_token", "refresh_token": rt}).json()
    assert body["refresh_token"] == rt


def test_refresh_parameters_in_the_query_string(connect: Connect) -> None:
    """Old YouTrack Mobile: POST ?grant_type=refresh_token&refresh_token=… with Basic, no body."""
    fake = FakeHub()
    client = connect(fake.app)
    rt = fake.seed_refresh_token(DEMO_LOGIN)
    response = client.post(
        TOKEN, params={"grant_type": "refresh_token", "refresh_token": rt}, headers=AUTH
    )
    assert response.status_code == 200
    assert [r.query["refresh_token"] for r in fake.token_requests("refresh_token")] == [rt]


@pytest.mark.parametrize(
    ("scope", "error"),
    [
        (YOUTRACK_SERVICE_ID, "invalid_scope"),  # more than originally granted
        ("no-such-service", "invalid_scope"),
    ],
)
def test_refresh_scope_checks(connect: Connect, scope: str, error: str) -> None:
    """A refresh may narrow the scope but never widen it; unknown scopes are invalid."""
    fake = FakeHub()
    rt = fake.seed_refresh_token(DEMO_LOGIN, scope=[HUB_SERVICE_ID])
    form = {"grant_type": "refresh_token", "refresh_token": rt, "scope": scope}
    assert_oauth_error(post_token(connect(fake.app), form), error)


@pytest.mark.parametrize("case", ["unknown", "expired", "revoked", "other-client", "banned"])
def test_refresh_invalid_grant(connect: Connect, clock: Clock, case: str) -> None:
    """Unknown, expired, removed, foreign or banned-owner refresh tokens: invalid_grant."""
    services = {
        DEMO_SERVICE_ID: HubService(DEMO_SERVICE_ID, DEMO_SERVICE_SECRET),
        "other": HubService("other", "pw"),
    }
    fake = FakeHub(services=services, refresh_token_ttl=100, now=clock)
    rt = fake.seed_refresh_token(DEMO_LOGIN)
    if case == "unknown":
        rt = "1.nope"
    elif case == "expired":
        clock.advance(100)
    elif case == "revoked":
        fake.revoke_refresh_token(rt)
    elif case == "other-client":
        rt = fake.seed_refresh_token(DEMO_LOGIN, client_id="other")
    else:
        fake.banned_users.add(DEMO_LOGIN)
    form = {"grant_type": "refresh_token", "refresh_token": rt}
    assert_oauth_error(post_token(connect(fake.app), form), "invalid_grant")


@pytest.mark.parametrize("via", ["basic", "body"])
def test_bad_client_is_invalid_client(connect: Connect, via: str) -> None:
    """Basic → 401 + WWW-Authenticate: Basic realm="Hub"; body credentials → 400."""
    form = {"grant_type": "client_credentials"}
    headers: dict[str, str] = {}
    if via == "basic":
        headers["Authorization"] = basic(DEMO_SERVICE_ID, "wrong")
    else:
        form |= {"client_id": DEMO_SERVICE_ID, "client_secret": "wrong"}
    response = post_token(connect(FakeHub().app), form, headers)
    assert_oauth_error(response, "invalid_client", 401 if via == "basic" else 400)
    assert response.headers.get("www-authenticate") == (
        'Basic realm="Hub"' if via == "basic" else None
    )


def test_body_client_credentials_are_accepted(connect: Connect) -> None:
    """client_secret_post, as listed in the discovery document."""
    form = {
        "grant_type": "client_credentials",
        "client_id": DEMO_SERVICE_ID,
        "client_secret": DEMO_SERVICE_SECRET,
    }
    assert post_token(connect(FakeHub().app), form, {}).status_code == 200


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "client_credentials", "scope": "nope"}, "invalid_scope"),
        ({"grant_type": "implicit"}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "code": "x"}, "invalid_grant"),
        ({}, "invalid_request"),
    ],
)
def test_other_token_errors(connect: Connect, form: dict[str, str], error: str) -> None:
    """Unknown scope, unsupported grants, unknown codes, missing grant_type."""
    assert_oauth_error(post_token(connect(FakeHub().app), form), error)


def test_error_code_in_body_option(connect: Connect) -> None:
    """error_code_in_body=True adds the status as error_code."""
    fake = FakeHub(error_code_in_body=True)
    response = post_token(connect(fake.app), {"grant_type": "implicit"})
    assert response.json()["error_code"] == 400


def test_base_path_and_users_me(connect: Connect, clock: Clock) -> None:
    """Under /hub: users/me returns the user (fields honoured) until the token expires."""
    fake = FakeHub(base_path="/hub", ttl=5, now=clock)
    client = connect(fake.app)
    access = client.post(f"/hub{TOKEN}", data=OFFLINE, headers=AUTH).json()["access_token"]
    bearer = {"Authorization": f"Bearer {access}"}
    response = client.get("/hub/api/rest/users/me", headers=bearer)
    assert response.status_code == 200
    assert response.headers["content-type"] == HUB_JSON
    user = response.json()
    assert user["login"] == DEMO_LOGIN
    assert user["id"] == fake.user_id(DEMO_LOGIN)
    assert user["banned"] is False
    assert user["guest"] is False
    fields = client.get(
        "/hub/api/rest/users/me", params={"fields": "id,login,banned"}, headers=bearer
    )
    assert set(fields.json()) == {"id", "login", "banned"}
    clock.advance(5)
    expired = client.get("/hub/api/rest/users/me", headers=bearer)
    assert expired.status_code == 401
    assert expired.json()["error"] == "Unauthorized"
    assert client.post(TOKEN, data=OFFLINE, headers=AUTH).status_code == 404


@pytest.mark.parametrize("authorization", [None, "Bearer nope"])
def test_me_endpoints_reject_missing_or_unknown_tokens(
    connect: Connect, authorization: str | None
) -> None:
    """401 {"error": "Unauthorized", "error_description": ...}."""
    client = connect(FakeHub().app)
    headers = {"Authorization": authorization} if authorization else {}
    for path in ("/api/rest/users/me", "/api/rest/services/me"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401
        assert set(response.json()) == {"error", "error_description"}
        assert response.json()["error"] == "Unauthorized"


def test_services_me_for_a_service_token(connect: Connect) -> None:
    """A client-credentials token: services/me 200, users/me 403 (valid token, no user)."""
    client = connect(FakeHub().app)
    access = post_token(client, {"grant_type": "client_credentials"}).json()["access_token"]
    bearer = {"Authorization": f"Bearer {access}"}
    service = client.get("/api/rest/services/me", headers=bearer)
    assert service.status_code == 200
    assert service.json()["id"] == DEMO_SERVICE_ID
    assert client.get("/api/rest/users/me", headers=bearer).status_code == 403


def test_users_me_needs_hub_scope(connect: Connect) -> None:
    """A token scoped only to YouTrack: 403 (permission), not 401 (dead token)."""
    client = connect(FakeHub().app)
    body = post_token(client, {**OFFLINE, "scope": YOUTRACK_SERVICE_ID}).json()
    response = client.get(
        "/api/rest/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert response.status_code == 403


def test_openid_configuration(connect: Connect) -> None:
    """Discovery lists the token endpoint and both client-auth methods."""
    client = connect(FakeHub(base_path="/hub").app)
    response = client.get("/hub/.well-known/openid-configuration")
    assert response.status_code == 200
    doc = response.json()
    hub = str(client.base_url).rstrip("/") + "/hub"
    assert doc["issuer"] == hub
    assert doc["token_endpoint"] == f"{hub}{TOKEN}"
    assert doc["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    assert "refresh_token" in doc["grant_types_supported"]


def test_admin_can_list_and_remove_refresh_tokens(connect: Connect) -> None:
    """GET/DELETE /api/rest/users/{id}/refreshtokens[/{rtId}]: removal kills the token."""
    fake = FakeHub()
    client = connect(fake.app)
    rt = post_token(client, OFFLINE).json()["refresh_token"]
    user_id = fake.user_id(DEMO_LOGIN)
    listing = client.get(f"/api/rest/users/{user_id}/refreshtokens").json()
    assert [t["id"] for t in listing["refreshtokens"]] == [fake.refresh_token_id(rt)]
    url = f"/api/rest/users/{user_id}/refreshtokens/{fake.refresh_token_id(rt)}"
    assert client.delete(url).status_code == 200
    assert client.delete(url).status_code == 404
    form = {"grant_type": "refresh_token", "refresh_token": rt}
    assert_oauth_error(post_token(client, form), "invalid_grant")


def test_fail_next_uses_hub_content_type(connect: Connect) -> None:
    """Canned failures carry Hub's JSON content type and OAuth error shape."""
    fake = FakeHub()
    client = connect(fake.app)
    fake.fail_next(1, 500)
    response = post_token(client, {"grant_type": "client_credentials"})
    assert_oauth_error(response, "server_error", 500)
    assert post_token(client, {"grant_type": "client_credentials"}).status_code == 200
    assert len(fake.token_requests("client_credentials")) == 2
