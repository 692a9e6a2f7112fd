"""FakeAerion behaves like Aerion's node-oauth2-server 2.x token endpoint (doc §2, §5.2)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from broker.fakes.aerion import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_EMAIL,
    DEMO_PASSWORD,
    FakeAerion,
    company_of,
)
from tests.fakes.helpers import Clock, Connect, basic

TENANT = {"companyurl": "https://acme.aerion.app"}
PASSWORD_FORM = {
    "grant_type": "password",
    "username": DEMO_EMAIL,
    "password": DEMO_PASSWORD,
    "client_id": DEMO_CLIENT_ID,
    "client_secret": DEMO_CLIENT_SECRET,
}
HEX40 = re.compile(r"^[0-9a-f]{40}$")
JSON_UTF8 = "application/json; charset=utf-8"


def token(
    client: httpx.Client, form: dict[str, str], headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.post("/oauth2/token", data=form, headers=TENANT if headers is None else headers)


def refresh_form(rt: str) -> dict[str, str]:
    return {
        "grant_type": "refresh_token",
        "refresh_token": rt,
        "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET,
    }


def assert_wrapped(response: httpx.Response, error: str, raw: str, status: int = 400) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == JSON_UTF8
    summary = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}[status]
    assert response.json() == {"error": error, "status": status, "summary": summary, "raw": raw}


def test_password_grant_body_is_exact(connect: Connect) -> None:
    """200, no-store, lower-case bearer, 40-hex tokens, int expires_in, in the library's order."""
    fake = FakeAerion(ttl=1.5)
    response = token(connect(fake.app), PASSWORD_FORM)
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_UTF8
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert list(body) == ["token_type", "access_token", "expires_in", "refresh_token"]
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 1
    assert isinstance(body["expires_in"], int)
    assert HEX40.match(body["access_token"])
    assert HEX40.match(body["refresh_token"])
    assert fake.issued_access_tokens == [body["access_token"]]
    assert fake.issued_refresh_tokens == [body["refresh_token"]]
    assert response.content.startswith(b'{"token_type":"bearer","access_token":"')


@pytest.mark.parametrize(
    "headers",
    [
        {"companyurl": "https://acme.aerion.app"},
        {"Origin": "https://acme.aerion.app"},
        {"Referer": "https://acme.aerion.app/some/page"},
        {"Referrer": "https://ACME.coffeecup.app"},
        {"CompanyURL": "https://acme.aerion.app"},
        {"Host": "acme.aerion.app"},
    ],
)
def test_tenant_comes_from_header_or_host(connect: Connect, headers: dict[str, str]) -> None:
    """companyurl / Origin / Referer / Referrer (any case) or a <company>. host pick the tenant."""
    fake = FakeAerion()
    assert token(connect(fake.app), PASSWORD_FORM, headers).status_code == 200


def test_missing_tenant_is_invalid_request(connect: Connect) -> None:
    """No header and a neutral host: 400 invalid_request."""
    response = token(connect(FakeAerion().app), PASSWORD_FORM, {})
    assert_wrapped(response, "invalid_request", "Missing origin/referrer/companyurl header")


def test_user_of_another_tenant_is_rejected(connect: Connect) -> None:
    """Credentials are checked against the tenant the header names."""
    fake = FakeAerion(tenants={"acme": {DEMO_EMAIL: DEMO_PASSWORD}, "globex": {}})
    response = token(connect(fake.app), PASSWORD_FORM, {"Origin": "https://globex.aerion.app"})
    assert_wrapped(response, "invalid_grant", "User credentials are invalid")


@pytest.mark.parametrize(
    ("override", "error", "raw"),
    [
        ({"password": "wrong"}, "invalid_grant", "User credentials are invalid"),
        ({"username": "x@example.com"}, "invalid_grant", "User credentials are invalid"),
        (
            {"password": ""},
            "invalid_client",
            'Missing parameters. "username" and "password" are required',
        ),
        ({"client_id": ""}, "invalid_client", "Invalid or missing client_id parameter"),
        ({"client_id": "My App v1.0"}, "invalid_client", "Invalid or missing client_id parameter"),
        ({"client_secret": ""}, "invalid_client", "Missing client_secret parameter"),
        ({"grant_type": ""}, "invalid_request", "Invalid or missing grant_type parameter"),
        (
            {"grant_type": "client_credentials"},
            "unsupported_grant_type",
            "Unsupported grant type: client_credentials",
        ),
        (
            {"grant_type": "authorization_code"},
            "unsupported_grant_type",
            "Unsupported grant type: authorization_code",
        ),
    ],
)
def test_token_errors_use_the_library_texts(
    connect: Connect, override: dict[str, str], error: str, raw: str
) -> None:
    """Wrapped {error, status, summary, raw} with node-oauth2-server's exact messages."""
    response = token(connect(FakeAerion().app), {**PASSWORD_FORM, **override})
    assert_wrapped(response, error, raw)
    if error == "invalid_client":
        assert response.headers["www-authenticate"] == 'Basic realm="Service"'


def test_native_error_bodies(connect: Connect) -> None:
    """wrapped_errors=False: node-oauth2-server's own {code, error, error_description}."""
    response = token(
        connect(FakeAerion(wrapped_errors=False).app), {**PASSWORD_FORM, "password": "x"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "error": "invalid_grant",
        "error_description": "User credentials are invalid",
    }


@pytest.mark.parametrize(
    ("method", "content"),
    [("POST", "json"), ("PUT", "form"), ("GET", "none")],
)
def test_token_endpoint_requires_form_post(connect: Connect, method: str, content: str) -> None:
    """JSON bodies or other methods: invalid_request, as node-oauth2-server answers."""
    client = connect(FakeAerion().app)
    kwargs: dict[str, Any] = {"headers": TENANT}
    if content == "json":
        kwargs["json"] = PASSWORD_FORM
    elif content == "form":
        kwargs["data"] = PASSWORD_FORM
    response = client.request(method, "/oauth2/token", **kwargs)
    assert_wrapped(
        response,
        "invalid_request",
        "Method must be POST with application/x-www-form-urlencoded encoding",
    )


def test_client_credentials_from_basic_take_precedence(connect: Connect) -> None:
    """aerion-cli's Basic coffeecup-cli:public, no client fields in the body."""
    fake = FakeAerion()
    form = {"grant_type": "password", "username": DEMO_EMAIL, "password": DEMO_PASSWORD}
    headers = {**TENANT, "Authorization": basic("coffeecup-cli", "public")}
    assert token(connect(fake.app), form, headers).status_code == 200


def test_validate_client_id_can_be_switched_off(connect: Connect) -> None:
    """validate_client_id=False accepts any non-empty client id."""
    fake = FakeAerion(validate_client_id=False)
    response = token(connect(fake.app), {**PASSWORD_FORM, "client_id": "My App v1.0"})
    assert response.status_code == 200


def test_refresh_rotates_and_revokes_the_old_token(connect: Connect) -> None:
    """Every refresh: a new refresh token; the old one is then "Invalid refresh token"."""
    fake = FakeAerion()
    client = connect(fake.app)
    first = token(client, PASSWORD_FORM).json()
    # aerion-cli refreshes without a tenant header: the refresh token knows its tenant.
    response = token(client, refresh_form(first["refresh_token"]), {})
    assert response.status_code == 200
    second = response.json()
    assert list(second) == ["token_type", "access_token", "expires_in", "refresh_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert not fake.is_refresh_token_valid(first["refresh_token"])
    response = token(client, refresh_form(first["refresh_token"]))
    assert_wrapped(response, "invalid_grant", "Invalid refresh token")
    assert fake.token_requests("refresh_token")[0].form == refresh_form(first["refresh_token"])


def test_old_refresh_token_may_survive_rotation(connect: Connect) -> None:
    """revoke_old_refresh_token=False: rotation still happens, the old token keeps working."""
    fake = FakeAerion(revoke_old_refresh_token=False)
    client = connect(fake.app)
    rt = token(client, PASSWORD_FORM).json()["refresh_token"]
    new = token(client, refresh_form(rt)).json()["refresh_token"]
    assert new != rt
    assert token(client, refresh_form(rt)).status_code == 200


def test_seeded_sso_refresh_token_works_for_any_client(connect: Connect) -> None:
    """A refresh token minted out of band (SSO) seeds an API client with another client id."""
    fake = FakeAerion()
    seed = fake.seed_refresh_token(DEMO_EMAIL, tenant="acme")
    response = token(connect(fake.app), refresh_form(seed), {})
    assert response.status_code == 200
    assert not fake.is_refresh_token_valid(seed)
    assert fake.issued_refresh_tokens == [seed, response.json()["refresh_token"]]


def test_refresh_token_of_another_tenant_is_invalid(connect: Connect) -> None:
    """A tenant header that disagrees with the refresh token's tenant: invalid_grant."""
    fake = FakeAerion(tenants={"acme": {DEMO_EMAIL: DEMO_PASSWORD}, "globex": {}})
    seed = fake.seed_refresh_token(DEMO_EMAIL, tenant="acme")
    headers = {"Origin": "https://globex.aerion.app"}
    assert_wrapped(
        token(connect(fake.app), refresh_form(seed), headers),
        "invalid_grant",
        "Invalid refresh token",
    )


@pytest.mark.parametrize(
    ("case", "raw"),
    [
        ("unknown", "Invalid refresh token"),
        ("missing", 'No "refresh_token" parameter'),
        ("expired", "Refresh token has expired"),
    ],
)
def test_refresh_errors(connect: Connect, clock: Clock, case: str, raw: str) -> None:
    """Unknown, missing and expired (refresh_token_ttl) refresh tokens."""
    fake = FakeAerion(refresh_token_ttl=60, now=clock)
    rt = {"unknown": "0" * 40, "missing": "", "expired": fake.seed_refresh_token(DEMO_EMAIL)}[case]
    clock.advance(60)
    error = "invalid_request" if case == "missing" else "invalid_grant"
    assert_wrapped(token(connect(fake.app), refresh_form(rt)), error, raw)


def test_users_me_with_a_live_token(connect: Connect, clock: Clock) -> None:
    """GET /v1/users/me: {"user": {id: int, email, firstname, lastname, status}}."""
    fake = FakeAerion(ttl=10, now=clock)
    client = connect(fake.app)
    access = token(client, PASSWORD_FORM).json()["access_token"]
    response = client.get("/v1/users/me", headers={"Authorization": f"Bearer {access}"})
    assert response.status_code == 200
    user = response.json()["user"]
    assert user["id"] == fake.user_id("acme", DEMO_EMAIL)
    assert isinstance(user["id"], int)
    assert user["email"] == DEMO_EMAIL
    assert user["status"] == 1
    assert {"firstname", "lastname"} <= set(user)


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize(
    ("case", "raw"),
    [
        ("expired", "The access token provided has expired."),
        ("unknown", "The access token provided is invalid."),
        ("missing", "The access token was not found"),
    ],
)
def test_users_me_rejects_dead_tokens(
    connect: Connect, clock: Clock, status: int, case: str, raw: str
) -> None:
    """Dead tokens: configurable 401 (E_UNAUTHORIZED) or 403 (E_FORBIDDEN), wrapped body."""
    fake = FakeAerion(ttl=10, unauthorized_status=status, now=clock)
    client = connect(fake.app)
    access = token(client, PASSWORD_FORM).json()["access_token"]
    headers = {
        "expired": {"Authorization": f"Bearer {access}"},
        "unknown": {"Authorization": "Bearer " + "f" * 40},
        "missing": {},
    }[case]
    clock.advance(10)
    response = client.get("/v1/users/me", headers=headers)
    assert_wrapped(response, "E_FORBIDDEN" if status == 403 else "E_UNAUTHORIZED", raw, status)


@pytest.mark.parametrize(
    ("value", "company"),
    [
        ("https://acme.aerion.app", "acme"),
        ("https://Acme.aerion.app/path?q=1", "acme"),
        ("acme.coffeecup.app", "acme"),
        ("http://localhost:3000", "localhost"),
    ],
)
def test_company_of(value: str, company: str) -> None:
    """Tenant header values are full origins; the company is the first host label."""
    assert company_of(value) == company
