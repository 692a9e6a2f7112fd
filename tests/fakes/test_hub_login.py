"""FakeHub's person login (protocol doc §3.1) and service registration (§3.9)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from broker.fakes.hub import (
    DEMO_ADMIN_TOKEN,
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
from tests.fakes.login import (
    CALLBACK,
    assert_form_page,
    fragment_of,
    log_in,
    pkce,
    query_of,
    verify_id_token,
    without_query,
)

AUTH = "/api/rest/oauth2/auth"
TOKEN = "/api/rest/oauth2/token"
HUB_JSON = "application/json;charset=UTF-8"
ADMIN = {"Authorization": f"Bearer {DEMO_ADMIN_TOKEN}"}
REGISTRATION = {
    "name": "Credential broker",
    "homeUrl": "http://127.0.0.1:8765",
    "redirectUris": [CALLBACK],
    "applicationName": "broker",
    "vendor": "acme",
    "version": "1.0",
    "trusted": True,
}


def register(
    client: httpx.Client, body: Any, headers: dict[str, str] | None = None, base: str = ""
) -> httpx.Response:
    return client.post(
        f"{base}/api/rest/services",
        params={"fields": "id,secret"},
        json=body,
        headers=ADMIN if headers is None else headers,
    )


def code_params(client_id: str, challenge: str | None, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": CALLBACK,
        "state": "hub-state",
        "scope": f"{HUB_SERVICE_ID} {YOUTRACK_SERVICE_ID}",
    }
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return params | extra


def login_code(client: httpx.Client, params: dict[str, str], base: str = "") -> str:
    response = log_in(client, base + AUTH, params, username=DEMO_LOGIN, password=DEMO_PASSWORD)
    assert response.status_code == 302, response.text
    answer = query_of(response.headers["location"])
    assert answer["state"] == params["state"]
    return answer["code"]


def exchange(
    client: httpx.Client,
    code: str,
    verifier: str,
    headers: dict[str, str],
    base: str = "",
    **form: str,
) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    return client.post(
        base + TOKEN, data=data | {"code_verifier": verifier} | form, headers=headers
    )


def me(client: httpx.Client, token: str, base: str = "") -> httpx.Response:
    return client.get(f"{base}/api/rest/users/me", headers={"Authorization": f"Bearer {token}"})


def test_register_a_service_then_log_in_with_it(connect: Connect) -> None:
    """§3.9: POST /api/rest/services?fields=id,secret → {id, secret}; the service logs in."""
    fake = FakeHub()
    client = connect(fake.app)
    response = register(client, REGISTRATION)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == HUB_JSON
    created = response.json()
    assert list(created) == ["id", "secret"]
    service = fake.services[created["id"]]
    assert service.secret == created["secret"]
    assert service.redirect_uris == (CALLBACK,)
    assert (service.name, service.home_url, service.trusted) == (
        "Credential broker",
        "http://127.0.0.1:8765",
        True,
    )
    assert (service.application_name, service.vendor, service.version) == ("broker", "acme", "1.0")
    verifier, challenge = pkce()
    code = login_code(client, code_params(created["id"], challenge))
    tokens = exchange(
        client, code, verifier, {"Authorization": basic(created["id"], created["secret"])}
    )
    assert tokens.status_code == 200, tokens.text
    assert tokens.headers["content-type"] == HUB_JSON
    body = tokens.json()
    # No access_type=offline: no refresh token (§3.3).
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["scope"] == f"{HUB_SERVICE_ID} {YOUTRACK_SERVICE_ID}"
    assert me(client, body["access_token"]).json()["login"] == DEMO_LOGIN
    assert fake.access_token_expires_at(body["access_token"]) is not None
    services_me = client.get(
        "/api/rest/services/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert services_me.json()["name"] == "Credential broker"


def test_the_registered_redirect_uris_are_enforced(connect: Connect) -> None:
    fake = FakeHub()
    client = connect(fake.app)
    created = register(client, REGISTRATION).json()
    _, challenge = pkce()
    elsewhere = code_params(created["id"], challenge, redirect_uri="http://127.0.0.1:8765/other")
    response = client.get(AUTH, params=elsewhere)
    assert response.status_code == 400
    assert "location" not in response.headers
    # The demo service registered none: any loopback URI with a port.
    assert client.get(AUTH, params=code_params(DEMO_SERVICE_ID, challenge)).status_code == 200


def test_access_type_offline_gives_a_refresh_token_that_never_rotates(connect: Connect) -> None:
    fake = FakeHub()
    client = connect(fake.app)
    verifier, challenge = pkce()
    code = login_code(client, code_params(DEMO_SERVICE_ID, challenge, access_type="offline"))
    auth = {"Authorization": basic(DEMO_SERVICE_ID, DEMO_SERVICE_SECRET)}
    body = exchange(client, code, verifier, auth).json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "refresh_token"}
    refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    refreshed = client.post(TOKEN, data=refresh, headers=auth).json()
    assert "refresh_token" not in refreshed
    assert fake.is_refresh_token_valid(body["refresh_token"])
    assert fake.token_requests("authorization_code")[0].form == {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
    }


def test_an_untrusted_service_logs_in_without_its_secret(connect: Connect) -> None:
    """§3.2: public clients (untrusted services) send client_id instead of the Auth header."""
    fake = FakeHub()
    client = connect(fake.app)
    created = register(client, REGISTRATION | {"trusted": False}).json()
    verifier, challenge = pkce()
    code = login_code(client, code_params(created["id"], challenge, access_type="offline"))
    body = exchange(client, code, verifier, {}, client_id=created["id"]).json()
    assert "refresh_token" in body
    refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    assert client.post(TOKEN, data=refresh | {"client_id": created["id"]}).status_code == 200
    # A trusted service must authenticate; so must any password or client grant.
    code = login_code(client, code_params(DEMO_SERVICE_ID, challenge))
    refused = exchange(client, code, verifier, {}, client_id=DEMO_SERVICE_ID)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_client"
    password = {"grant_type": "password", "username": DEMO_LOGIN, "password": DEMO_PASSWORD}
    refused = client.post(TOKEN, data=password | {"client_id": created["id"]})
    assert refused.json()["error"] == "invalid_client"
    seeded = fake.seed_refresh_token(DEMO_LOGIN, client_id=created["id"])
    not_pkce = {"grant_type": "refresh_token", "refresh_token": seeded, "client_id": created["id"]}
    assert client.post(TOKEN, data=not_pkce).json()["error"] == "invalid_client"


def test_code_grant_errors_are_hub_errors(connect: Connect) -> None:
    """Wrong verifier, reuse (revoking), wrong service: invalid_grant in Hub's shape."""
    fake = FakeHub()
    client = connect(fake.app)
    auth = {"Authorization": basic(DEMO_SERVICE_ID, DEMO_SERVICE_SECRET)}
    verifier, challenge = pkce()
    code = login_code(client, code_params(DEMO_SERVICE_ID, challenge))
    wrong = exchange(client, code, pkce()[0], auth)
    assert wrong.status_code == 400
    assert wrong.headers["content-type"] == HUB_JSON
    assert set(wrong.json()) == {"error", "error_description"}
    assert wrong.json()["error"] == "invalid_grant"
    first = exchange(client, code, verifier, auth).json()
    again = exchange(client, code, verifier, auth)
    assert again.json()["error"] == "invalid_grant"
    assert not fake.is_access_token_valid(first["access_token"])


def test_implicit_flow_answers_in_the_fragment(connect: Connect) -> None:
    """response_type=token: #access_token, token_type, expires_in, scope, state; no refresh."""
    fake = FakeHub(ttl=1800)
    client = connect(fake.app)
    params = {
        "response_type": "token",
        "client_id": DEMO_SERVICE_ID,
        "redirect_uri": CALLBACK,
        "state": "s-9",
        "scope": "YouTrack",
    }
    response = log_in(client, AUTH, params, username=DEMO_LOGIN, password=DEMO_PASSWORD)
    assert response.status_code == 302
    location = response.headers["location"]
    assert without_query(location) == CALLBACK
    assert "?" not in location
    answer = fragment_of(location)
    assert answer == {
        "access_token": fake.issued_access_tokens[0],
        "token_type": "Bearer",
        "expires_in": "1800",
        "scope": YOUTRACK_SERVICE_ID,
        "state": "s-9",
    }
    assert fake.issued_refresh_tokens == []
    assert fake.is_access_token_valid(answer["access_token"])
    denied = log_in(client, AUTH, params, username="", password="", action="deny")
    assert fragment_of(denied.headers["location"])["error"] == "access_denied"
    wrong = client.get(AUTH, params=params | {"scope": "no-such-service"})
    assert fragment_of(wrong.headers["location"])["error"] == "invalid_scope"


def test_a_service_can_switch_flows_off(connect: Connect) -> None:
    services = {"s": HubService("s", "pw", implicit_enabled=False, auth_code_enabled=False)}
    client = connect(FakeHub(services=services).app)
    _, challenge = pkce()
    code = client.get(AUTH, params=code_params("s", challenge))
    assert query_of(code.headers["location"])["error"] == "unauthorized_client"
    implicit = client.get(AUTH, params=code_params("s", None, response_type="token"))
    assert fragment_of(implicit.headers["location"])["error"] == "unauthorized_client"


def test_the_login_form_under_a_base_path_and_banned_users(connect: Connect) -> None:
    fake = FakeHub(base_path="/hub")
    client = connect(fake.app)
    _, challenge = pkce()
    page = client.get("/hub" + AUTH, params=code_params(DEMO_SERVICE_ID, challenge))
    assert_form_page(page, "username", "password", "allow", "deny")
    assert f'action="/hub{AUTH}"' in page.text
    assert client.get(AUTH, params=code_params(DEMO_SERVICE_ID, challenge)).status_code == 404
    fake.banned_users.add(DEMO_LOGIN)
    banned = log_in(
        client,
        "/hub" + AUTH,
        code_params(DEMO_SERVICE_ID, challenge),
        username=DEMO_LOGIN,
        password=DEMO_PASSWORD,
    )
    assert banned.status_code == 401
    assert fake.issued_codes == []
    assert len(fake.authorize_requests()) == 3  # the 404 is no authorize request


def test_openid_adds_an_id_token_signed_with_hubs_keys(connect: Connect, clock: Clock) -> None:
    fake = FakeHub(base_path="/hub", now=clock)
    client = connect(fake.app)
    verifier, challenge = pkce()
    params = code_params(DEMO_SERVICE_ID, challenge, scope=f"openid {HUB_SERVICE_ID}", nonce="x")
    code = login_code(client, params, base="/hub")
    auth = {"Authorization": basic(DEMO_SERVICE_ID, DEMO_SERVICE_SECRET)}
    body = exchange(client, code, verifier, auth, base="/hub").json()
    assert body["scope"] == f"{HUB_SERVICE_ID} openid"
    discovery = client.get("/hub/.well-known/openid-configuration").json()
    jwks = client.get(discovery["jwks_uri"]).json()
    verify_id_token(
        body["id_token"],
        jwks,
        issuer=discovery["issuer"],
        audience=DEMO_SERVICE_ID,
        now=clock(),
        nonce="x",
        sub=fake.user_id(DEMO_LOGIN),
    )
    assert discovery["issuer"].endswith("/hub")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer nope"}, 401),
        ({"Authorization": basic("admin", "x")}, 401),
        ("user", 403),
    ],
)
def test_registration_needs_the_admin_token(
    connect: Connect, headers: dict[str, str] | str, status: int
) -> None:
    fake = FakeHub()
    client = connect(fake.app)
    if headers == "user":
        token = client.post(
            TOKEN,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic(DEMO_SERVICE_ID, DEMO_SERVICE_SECRET)},
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
    assert isinstance(headers, dict)
    response = register(client, REGISTRATION, headers)
    assert response.status_code == status
    assert response.headers["content-type"] == HUB_JSON
    assert set(response.json()) == {"error", "error_description"}
    assert list(fake.services) == [DEMO_SERVICE_ID]
    assert register(connect(FakeHub(admin_token=None).app), REGISTRATION).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"name": ""},
        {"name": "x", "redirectUris": "http://127.0.0.1:1/cb"},
        {"name": "x", "redirectUris": [1]},
        {"name": "x", "trusted": "yes"},
        {"name": "x", "homeUrl": 5},
        {"name": "x", "authCodeFlowEnabled": 1},
    ],
)
def test_bad_registrations_are_400(connect: Connect, body: Any) -> None:
    fake = FakeHub()
    response = register(connect(fake.app), body)
    assert response.status_code == 400
    assert response.json()["error"] == "Bad Request"
    assert list(fake.services) == [DEMO_SERVICE_ID]


def test_registration_answers_the_fields_asked_for(connect: Connect) -> None:
    fake = FakeHub()
    client = connect(fake.app)
    body = {"name": "Mine", "secret": "my-secret", "implicitFlowEnabled": False}
    plain = client.post("/api/rest/services", json=body, headers=ADMIN).json()
    assert plain == {"type": "service", "id": plain["id"], "name": "Mine"}
    service = fake.services[plain["id"]]
    assert (service.secret, service.trusted, service.implicit_enabled) == (
        "my-secret",
        False,
        False,
    )
    wide = client.post(
        "/api/rest/services",
        params={"fields": "name,trusted,redirectUris"},
        json=body,
        headers=ADMIN,
    ).json()
    assert wide == {"name": "Mine", "trusted": False, "redirectUris": []}
