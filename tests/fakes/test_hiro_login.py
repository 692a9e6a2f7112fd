"""FakeHiro's person logins: the UI flow (seed doc, protocol doc §1.8) and the auth API 6.6
code flow with PKCE (§1.4)."""

from __future__ import annotations

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
from tests.fakes.login import CALLBACK, assert_form_page, hidden_fields, log_in, pkce, query_of

APP_URL = "https://another.example.com/my/app/"
UI = "/api/auth/6/ui/"
AUTHORIZE = "/api/auth/6.6/authorize"
TOKEN = "/api/auth/6.6/token"


def registered() -> FakeHiro:
    return FakeHiro(redirect_uris={DEMO_CLIENT_ID: [APP_URL, CALLBACK]})


def account(client: httpx.Client, token: str) -> httpx.Response:
    return client.get("/api/auth/6/me/account", headers={"Authorization": f"Bearer {token}"})


def test_ui_flow_redirects_with_accessoken_in_the_fragment(connect: Connect) -> None:
    """GET <auth>/ui/?client_id&redirect_url → login → <redirect_url>#accessoken=<token>."""
    fake = registered()
    client = connect(fake.app)
    params = {"client_id": DEMO_CLIENT_ID, "redirect_url": APP_URL}
    page = client.get(UI, params=params)
    assert page.status_code == 200
    assert_form_page(page, "username", "password", "allow", "deny")
    assert hidden_fields(page.text) == params
    response = log_in(client, UI, params, username=DEMO_USERNAME, password=DEMO_PASSWORD)
    assert response.status_code == 302
    token = fake.issued_access_tokens[0]
    # Exactly the seed doc's shape and spelling: no other parameter, no query.
    assert response.headers["location"] == f"{APP_URL}#accessoken={token}"
    assert account(client, token).json()["ogit/name"] == DEMO_USERNAME
    assert decode_payload(token)["data"]["_APPLICATION"] == DEMO_CLIENT_ID
    assert fake.issued_refresh_tokens == []
    assert [r.path for r in fake.authorize_requests()] == [UI, UI, UI]


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"client_id": DEMO_CLIENT_ID, "redirect_url": "https://evil.example/"}, "not assigned"),
        ({"client_id": DEMO_CLIENT_ID, "redirect_url": APP_URL + "x"}, "not assigned"),
        ({"client_id": DEMO_CLIENT_ID}, "not assigned"),
        ({"client_id": "nobody", "redirect_url": APP_URL}, "Unknown application"),
    ],
)
def test_ui_flow_refuses_unknown_redirect_urls(
    connect: Connect, params: dict[str, str], problem: str
) -> None:
    """Seed doc: "The Auth API will refuse to accept to unknown redirect URLs"."""
    fake = registered()
    client = connect(fake.app)
    for response in (
        client.get(UI, params=params),
        client.post(
            UI,
            data=params | {"username": DEMO_USERNAME, "password": DEMO_PASSWORD, "action": "allow"},
        ),
    ):
        assert response.status_code == 400
        assert "location" not in response.headers
        assert problem in response.text
    assert fake.issued_access_tokens == []


def test_ui_flow_wrong_password_and_deny(connect: Connect) -> None:
    fake = registered()
    client = connect(fake.app)
    params = {"client_id": DEMO_CLIENT_ID, "redirect_url": APP_URL}
    wrong = log_in(client, UI, params, username=DEMO_USERNAME, password="nope")
    assert wrong.status_code == 401
    assert "Wrong username or password" in wrong.text
    denied = log_in(client, UI, params, username="", password="", action="deny")
    assert denied.headers["location"] == f"{APP_URL}#error=access_denied"
    assert fake.issued_access_tokens == []
    # Without registered URLs a client may use loopback ones (a local test app).
    local = FakeHiro()
    client = connect(local.app)
    ok = log_in(
        client,
        "/api/auth/6/ui",
        {"client_id": DEMO_CLIENT_ID, "redirect_url": CALLBACK},
        username=DEMO_USERNAME,
        password=DEMO_PASSWORD,
    )
    assert ok.headers["location"].startswith(CALLBACK + "#accessoken=")


def code_params(challenge: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": DEMO_CLIENT_ID,
        "redirect_uri": CALLBACK,
        "state": "h-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }


def get_code(client: httpx.Client, challenge: str) -> str:
    response = log_in(
        client, AUTHORIZE, code_params(challenge), username=DEMO_USERNAME, password=DEMO_PASSWORD
    )
    assert response.status_code == 302, response.text
    answer = query_of(response.headers["location"])
    assert answer["state"] == "h-1"
    return answer["code"]


def code_form(code: str, verifier: str) -> dict[str, str]:
    """What arago's Java CodeFlowAuthTokenAPIHandler sends: the client in the body."""
    return {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": CALLBACK,
        "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET,
    }


def test_auth_api_6_6_code_flow(connect: Connect, clock: Clock) -> None:
    """/authorize → code → /token: HIRO's OAuth body, expires_in a string by default."""
    fake = FakeHiro(auth_version="6.6", ttl=600, now=clock)
    client = connect(fake.app)
    verifier, challenge = pkce()
    response = client.post(TOKEN, data=code_form(get_code(client, challenge), verifier))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "access_token": fake.issued_access_tokens[0],
        "expires_in": "600",
        "token_type": "Bearer",
        "refresh_token": fake.issued_refresh_tokens[0],
    }
    assert account(client, body["access_token"]).status_code == 200
    refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    refreshed = client.post(
        TOKEN, data=refresh, headers={"Authorization": basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)}
    )
    assert refreshed.status_code == 200
    assert fake.token_requests("authorization_code")[0].form == code_form(
        fake.issued_codes[0], verifier
    )


def test_code_flow_errors_are_hiro_errors(connect: Connect, clock: Clock) -> None:
    fake = FakeHiro(now=clock)
    client = connect(fake.app)
    verifier, challenge = pkce()
    code = get_code(client, challenge)
    wrong = client.post(TOKEN, data=code_form(code, pkce()[0]))
    assert wrong.status_code == 400
    assert wrong.headers["content-type"] == "application/json"
    error = wrong.json()["error"]
    assert set(error) == {"message", "code"}
    assert error["code"] == 400
    assert error["message"].startswith("invalid_grant: ")
    bad_client = client.post(TOKEN, data=code_form(code, verifier) | {"client_secret": "x"})
    assert bad_client.status_code == 401
    clock.advance(60)
    expired = client.post(TOKEN, data=code_form(code, verifier))
    assert "expired" in expired.json()["error"]["message"]
    fresh = get_code(client, challenge)
    first = client.post(TOKEN, data=code_form(fresh, verifier)).json()
    reused = client.post(TOKEN, data=code_form(fresh, verifier))
    assert reused.json()["error"]["message"] == "invalid_grant: Authorization code was already used"
    assert not fake.is_access_token_valid(first["access_token"])
    assert not fake.is_refresh_token_valid(first["refresh_token"])


def test_code_flow_needs_pkce_and_a_registered_redirect(connect: Connect) -> None:
    fake = registered()
    client = connect(fake.app)
    _, challenge = pkce()
    no_pkce = {k: v for k, v in code_params(challenge).items() if not k.startswith("code_")}
    response = client.get(AUTHORIZE, params=no_pkce)
    assert query_of(response.headers["location"])["error"] == "invalid_request"
    unknown = client.get(
        AUTHORIZE, params=code_params(challenge) | {"redirect_uri": "http://127.0.0.1:1/x"}
    )
    assert unknown.status_code == 400
    assert "location" not in unknown.headers


def test_public_clients_redeem_codes_with_client_id_alone(connect: Connect) -> None:
    fake = FakeHiro(public_clients=["spa"])
    client = connect(fake.app)
    verifier, challenge = pkce()
    params = code_params(challenge) | {"client_id": "spa"}
    response = log_in(client, AUTHORIZE, params, username=DEMO_USERNAME, password=DEMO_PASSWORD)
    code = query_of(response.headers["location"])["code"]
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier}
    body = client.post(TOKEN, data=form | {"redirect_uri": CALLBACK, "client_id": "spa"}).json()
    assert decode_payload(body["access_token"])["aud"] == "spa"
    password = {"grant_type": "password", "username": DEMO_USERNAME, "password": DEMO_PASSWORD}
    assert client.post(TOKEN, data=password | {"client_id": "spa"}).status_code == 401


def test_an_unknown_client_without_a_secret_is_refused(connect: Connect) -> None:
    """No secret sent is no match for "no such client" (None == None)."""
    client = connect(FakeHiro().app)
    login = {"username": DEMO_USERNAME, "password": DEMO_PASSWORD, "client_id": "nobody"}
    assert client.post("/api/auth/6/app", json=login).status_code == 401
    form = {"grant_type": "password", **login}
    assert client.post(TOKEN, data=form).status_code == 401
