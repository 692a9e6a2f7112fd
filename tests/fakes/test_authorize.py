"""FakeOAuth2's authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636) and ID tokens."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx
import pytest

from broker.fakes.oauth2 import DEMO_PUBLIC_CLIENT_ID, FakeOAuth2
from broker.fakes.redirects import redirect_allowed
from tests.fakes.helpers import Clock, Connect, basic
from tests.fakes.login import (
    CALLBACK,
    assert_form_page,
    hidden_fields,
    log_in,
    pkce,
    query_of,
    verify_id_token,
    without_query,
)

CLIENTS = {"app": "app-secret", "other": "other-secret"}
USERS = {"alice": "alice-pw"}
BASIC = {"Authorization": basic("app", "app-secret")}
PUBLIC = "cli"


def fake(**kwargs: Any) -> FakeOAuth2:
    return FakeOAuth2(clients=CLIENTS, users=USERS, public_clients=[PUBLIC], **kwargs)


def request_params(challenge: str | None, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": CALLBACK,
        "state": "st-1",
        "scope": "openid offline_access",
        "nonce": "n-1",
    }
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return params | extra


def get_code(client: httpx.Client, params: dict[str, str]) -> str:
    response = log_in(client, "/authorize", params, username="alice", password="alice-pw")
    assert response.status_code == 302, response.text
    answer = query_of(response.headers["location"])
    assert answer["state"] == params["state"]
    return answer["code"]


def redeem(
    client: httpx.Client,
    code: str,
    verifier: str | None,
    headers: dict[str, str] | None = None,
    **extra: str,
) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    if verifier is not None:
        form["code_verifier"] = verifier
    return client.post(
        "/oauth/token", data=form | extra, headers=BASIC if headers is None else headers
    )


def assert_grant_error(response: httpx.Response, error: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


def test_the_whole_login_and_the_id_token(connect: Connect, clock: Clock) -> None:
    """Form, Allow, 302 with code and state, exchange, and an ID token the JWKS verifies."""
    f = fake(ttl=600, now=clock)
    client = connect(f.app)
    verifier, challenge = pkce()
    params = request_params(challenge)
    page = client.get("/authorize", params=params)
    assert page.status_code == 200
    assert_form_page(page, "username", "password", "allow", "deny")
    assert hidden_fields(page.text) == params
    login = client.post(
        "/authorize",
        data={**params, "username": "alice", "password": "alice-pw", "action": "allow"},
    )
    assert login.status_code == 302
    location = login.headers["location"]
    assert without_query(location) == CALLBACK
    answer = query_of(location)
    assert set(answer) == {"code", "state"}
    assert answer["state"] == "st-1"
    assert f.issued_codes == [answer["code"]]
    clock.advance(5)
    response = redeem(client, answer["code"], verifier)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
        "id_token",
    }
    assert body["scope"] == "openid offline_access"
    assert f.is_access_token_valid(body["access_token"])
    assert f.is_refresh_token_valid(body["refresh_token"])
    discovery = client.get("/.well-known/openid-configuration").json()
    jwks = client.get(discovery["jwks_uri"]).json()
    claims = verify_id_token(
        body["id_token"],
        jwks,
        issuer=discovery["issuer"],
        audience="app",
        now=clock(),
        nonce="n-1",
        sub="alice",
    )
    assert claims["iat"] == int(clock())
    assert claims["exp"] == int(clock()) + 600
    assert claims["auth_time"] == int(clock()) - 5
    # OIDC Core §3.1.3.6: the left half of SHA-256 of the access token.
    digest = hashlib.sha256(body["access_token"].encode()).digest()
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()
    assert discovery["issuer"] == str(client.base_url).rstrip("/")
    me = client.get("/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json()["sub"] == "alice"
    assert [r.method for r in f.authorize_requests()] == ["GET", "POST"]
    assert f.token_requests("authorization_code")[0].form == {
        "grant_type": "authorization_code",
        "code": answer["code"],
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
    }


def test_an_id_token_only_with_openid_and_a_forged_one_fails(connect: Connect) -> None:
    """No openid, no id_token; an ID token with a changed payload does not verify."""
    f = fake()
    client = connect(f.app)
    verifier, challenge = pkce()
    body = redeem(client, get_code(client, request_params(challenge, scope="read")), verifier)
    assert "id_token" not in body.json()
    verifier, challenge = pkce()
    token = redeem(client, get_code(client, request_params(challenge)), verifier).json()["id_token"]
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload[:-2]}AA.{signature}"
    with pytest.raises(Exception, match="signature"):
        verify_id_token(forged, f.jwks(), issuer="x", audience="app", now=0)


def test_issuer_option_names_the_issuer_of_metadata_and_id_tokens(connect: Connect) -> None:
    f = fake(issuer="https://idp.example")
    client = connect(f.app)
    verifier, challenge = pkce()
    token = redeem(client, get_code(client, request_params(challenge)), verifier).json()["id_token"]
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        assert client.get(path).json()["issuer"] == "https://idp.example"
    claims = verify_id_token(
        token, f.jwks(), issuer="https://idp.example", audience="app", now=f.now()
    )
    assert claims["sub"] == "alice"


def test_discovery_names_every_endpoint(connect: Connect) -> None:
    """RFC 8414 and OIDC Discovery: one document, endpoints that answer."""
    client = connect(fake().app)
    doc = client.get("/.well-known/openid-configuration").json()
    assert doc == client.get("/.well-known/oauth-authorization-server").json()
    base = str(client.base_url).rstrip("/")
    assert doc["authorization_endpoint"] == base + "/authorize"
    assert doc["token_endpoint"] == base + "/oauth/token"
    assert doc["jwks_uri"] == base + "/jwks"
    assert doc["device_authorization_endpoint"] == base + "/device_authorization"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["response_types_supported"] == ["code"]
    assert set(doc["grant_types_supported"]) == {
        "authorization_code",
        "client_credentials",
        "password",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:device_code",
    }
    assert doc["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    keys = client.get("/jwks").json()["keys"]
    assert [(k["kty"], k["alg"], k["use"]) for k in keys] == [("RSA", "RS256", "sig")]
    plain = FakeOAuth2(allow_plain_pkce=True, public_clients=[])
    doc = connect(plain.app).get("/.well-known/openid-configuration").json()
    assert doc["code_challenge_methods_supported"] == ["S256", "plain"]
    assert "none" not in doc["token_endpoint_auth_methods_supported"]


def test_public_client_needs_no_secret_but_pkce(connect: Connect) -> None:
    """client_id in the body and the verifier are all a public client sends."""
    f = fake(require_pkce=False)
    client = connect(f.app)
    verifier, challenge = pkce()
    code = get_code(client, request_params(challenge, client_id=PUBLIC))
    response = redeem(client, code, verifier, headers={}, client_id=PUBLIC)
    assert response.status_code == 200, response.text
    rt = response.json()["refresh_token"]
    refreshed = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": rt, "client_id": PUBLIC},
    )
    assert refreshed.status_code == 200
    # Even with require_pkce off, a public client must use PKCE.
    no_pkce = client.get("/authorize", params=request_params(None, client_id=PUBLIC))
    assert query_of(no_pkce.headers["location"])["error"] == "invalid_request"
    password = {"grant_type": "password", "username": "alice", "password": "alice-pw"}
    refused = client.post("/oauth/token", data=password | {"client_id": PUBLIC})
    assert_grant_error(refused, "unauthorized_client")
    with_secret = redeem(client, code, verifier, headers={}, client_id=PUBLIC, client_secret="x")
    assert_grant_error(with_secret, "invalid_client")


def test_the_demo_public_client_exists_by_default(connect: Connect) -> None:
    f = FakeOAuth2()
    client = connect(f.app)
    verifier, challenge = pkce()
    params = request_params(challenge, client_id=DEMO_PUBLIC_CLIENT_ID)
    response = log_in(
        client, "/authorize", params, username="demo@example.com", password="demo-password"
    )
    code = query_of(response.headers["location"])["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    form |= {"code_verifier": verifier, "client_id": DEMO_PUBLIC_CLIENT_ID}
    assert client.post("/oauth/token", data=form).status_code == 200


def test_wrong_verifier_is_invalid_grant(connect: Connect) -> None:
    """RFC 7636 §4.6; a failed attempt does not use the code up."""
    f = fake()
    client = connect(f.app)
    verifier, challenge = pkce()
    code = get_code(client, request_params(challenge))
    other, _ = pkce()
    assert_grant_error(redeem(client, code, other), "invalid_grant")
    assert_grant_error(redeem(client, code, None), "invalid_grant")
    assert_grant_error(redeem(client, code, "short"), "invalid_grant")
    assert f.issued_access_tokens == []
    assert redeem(client, code, verifier).status_code == 200


@pytest.mark.parametrize("verifier", ["a" * 42, "a" * 129, "+" * 43, "ä" * 43])
def test_a_verifier_outside_rfc_7636_is_refused_even_if_it_hashes_right(
    connect: Connect, verifier: str
) -> None:
    """§4.1: 43 to 128 unreserved characters, whatever the challenge."""
    client = connect(fake().app)
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    response = redeem(client, get_code(client, request_params(challenge)), verifier)
    assert_grant_error(response, "invalid_grant")
    assert response.json()["error_description"] == "code_verifier is malformed"


def test_a_verifier_without_a_challenge_is_a_downgrade(connect: Connect) -> None:
    f = fake(require_pkce=False)
    client = connect(f.app)
    code = get_code(client, request_params(None))
    verifier, _ = pkce()
    assert_grant_error(redeem(client, code, verifier), "invalid_grant")
    assert redeem(client, code, None).status_code == 200


@pytest.mark.parametrize("revokes", [True, False])
def test_a_reused_code_fails_and_revokes_its_tokens(connect: Connect, revokes: bool) -> None:
    """RFC 6749 §4.1.2: deny, and (code_reuse_revokes) revoke the tokens issued from it."""
    f = fake(code_reuse_revokes=revokes)
    client = connect(f.app)
    verifier, challenge = pkce()
    code = get_code(client, request_params(challenge))
    body = redeem(client, code, verifier).json()
    rotated = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers=BASIC,
    ).json()
    assert_grant_error(redeem(client, code, verifier), "invalid_grant")
    assert f.is_access_token_valid(body["access_token"]) is not revokes
    assert f.is_access_token_valid(rotated["access_token"]) is not revokes
    assert f.is_refresh_token_valid(rotated["refresh_token"]) is not revokes
    assert len(f.issued_access_tokens) == 2


def test_a_code_expires_after_60_seconds_of_the_fakes_clock(connect: Connect, clock: Clock) -> None:
    f = fake(now=clock)
    client = connect(f.app)
    verifier, challenge = pkce()
    fresh = get_code(client, request_params(challenge))
    stale = get_code(client, request_params(challenge))
    clock.advance(59.9)
    assert redeem(client, fresh, verifier).status_code == 200
    clock.advance(0.1)
    response = redeem(client, stale, verifier)
    assert_grant_error(response, "invalid_grant")
    assert "expired" in response.json()["error_description"]
    f.code_ttl = 600
    assert redeem(client, get_code(client, request_params(challenge)), verifier).status_code == 200


def test_a_code_is_bound_to_its_client_and_redirect_uri(connect: Connect) -> None:
    f = fake()
    client = connect(f.app)
    verifier, challenge = pkce()
    code = get_code(client, request_params(challenge))
    other = {"Authorization": basic("other", "other-secret")}
    assert_grant_error(redeem(client, code, verifier, headers=other), "invalid_grant")
    moved = redeem(client, code, verifier, redirect_uri="http://127.0.0.1:8765/other")
    assert_grant_error(moved, "invalid_grant")
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier}
    assert_grant_error(client.post("/oauth/token", data=form, headers=BASIC), "invalid_grant")
    assert redeem(client, code, verifier).status_code == 200


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"client_id": "nobody"}, "Unknown client"),
        ({"client_id": ""}, "Missing client_id"),
        ({"redirect_uri": "https://evil.example/cb"}, "not registered"),
        ({"redirect_uri": "http://127.0.0.1/cb"}, "not registered"),
        ({"redirect_uri": CALLBACK + "#frag"}, "not registered"),
        ({"redirect_uri": ""}, "Missing redirect_uri"),
    ],
)
def test_a_bad_client_or_redirect_uri_is_a_page_never_a_redirect(
    connect: Connect, change: dict[str, str], problem: str
) -> None:
    """RFC 6749 §4.1.2.1: the user agent must not be sent to an unverified URI."""
    f = fake()
    client = connect(f.app)
    _, challenge = pkce()
    params = request_params(challenge) | change
    for response in (
        client.get("/authorize", params=params),
        client.post("/authorize", data=params | {"username": "alice", "password": "alice-pw"}),
    ):
        assert response.status_code == 400
        assert "location" not in response.headers
        assert problem in response.text
    assert f.issued_codes == []


def test_registered_redirect_uris_are_enforced(connect: Connect) -> None:
    f = fake(redirect_uris={"app": ["https://app.example/cb", "http://127.0.0.1:1/cb"]})
    client = connect(f.app)
    _, challenge = pkce()
    for uri, ok in [
        ("https://app.example/cb", True),
        ("http://127.0.0.1:49152/cb", True),  # RFC 8252 §7.3: any port on loopback
        ("https://app.example/cb2", False),
        (CALLBACK, False),
    ]:
        response = client.get("/authorize", params=request_params(challenge, redirect_uri=uri))
        assert response.status_code == (200 if ok else 400), uri
    single = fake(redirect_uris={"app": ["https://app.example/only?x=1"]})
    client = connect(single.app)
    params = request_params(challenge)
    del params["redirect_uri"]
    response = log_in(client, "/authorize", params, username="alice", password="alice-pw")
    assert response.headers["location"].startswith("https://app.example/only?x=1&code=")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),  # means plain (RFC 7636 §4.3)
        ({"code_challenge_method": "S512"}, "invalid_request"),
        ({"code_challenge": "too-short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "invalid_request"),
        ({"prompt": "none"}, "login_required"),
    ],
)
def test_other_bad_requests_redirect_with_the_error(
    connect: Connect, change: dict[str, str | None], error: str
) -> None:
    """RFC 6749 §4.1.2.1 / RFC 7636 §4.4.1: error, error_description and state, no code."""
    f = fake()
    client = connect(f.app)
    _, challenge = pkce()
    params = {k: v for k, v in (request_params(challenge) | change).items() if v is not None}
    response = client.get("/authorize", params=params)
    assert response.status_code == 302
    answer = query_of(response.headers["location"])
    assert answer["error"] == error
    assert answer["state"] == "st-1"
    assert "code" not in answer
    assert answer["error_description"]


def test_plain_pkce_and_no_pkce_when_switched_on(connect: Connect) -> None:
    f = fake(allow_plain_pkce=True, require_pkce=False)
    client = connect(f.app)
    verifier, _ = pkce()
    code = get_code(client, request_params(None, code_challenge=verifier))  # method: plain
    assert redeem(client, code, verifier).status_code == 200
    assert redeem(client, get_code(client, request_params(None)), None).status_code == 200


def test_a_repeated_parameter_is_refused(connect: Connect) -> None:
    """RFC 6749 §3.1: parameters MUST NOT be included more than once."""
    client = connect(fake().app)
    _, challenge = pkce()
    query = httpx.QueryParams(request_params(challenge)).add("scope", "admin")
    response = client.get("/authorize", params=query)
    assert query_of(response.headers["location"])["error"] == "invalid_request"
    query = httpx.QueryParams(request_params(challenge)).add("client_id", "other")
    assert client.get("/authorize", params=query).status_code == 400


def test_deny_redirects_with_access_denied(connect: Connect) -> None:
    f = fake()
    client = connect(f.app)
    _, challenge = pkce()
    response = log_in(
        client, "/authorize", request_params(challenge), username="", password="", action="deny"
    )
    assert response.status_code == 302
    assert query_of(response.headers["location"]) == {
        "error": "access_denied",
        "error_description": "The user denied access",
        "state": "st-1",
    }
    assert f.issued_codes == []


def test_a_wrong_password_shows_the_form_again(connect: Connect) -> None:
    f = fake()
    client = connect(f.app)
    _, challenge = pkce()
    params = request_params(challenge)
    response = log_in(client, "/authorize", params, username="alice", password="nope")
    assert response.status_code == 401
    assert_form_page(response, "username", "password", "allow", "deny", "error")
    assert 'value="alice"' in response.text
    assert hidden_fields(response.text) == params
    assert f.issued_codes == []
    unknown = client.post("/authorize", data=params | {"action": "maybe"})
    assert unknown.status_code == 400


def test_authorize_requests_can_fail_on_demand(connect: Connect) -> None:
    f = fake()
    client = connect(f.app)
    f.fail_next(1, 503, "down for maintenance", target="authorize")
    _, challenge = pkce()
    assert client.get("/authorize", params=request_params(challenge)).status_code == 503
    assert client.get("/authorize", params=request_params(challenge)).status_code == 200
    assert len(f.authorize_requests()) == 2
    assert f.token_requests() == []


@pytest.mark.parametrize(
    ("uri", "registered", "allowed"),
    [
        ("http://127.0.0.1:5000/cb", None, True),
        ("http://localhost:5000/", None, True),
        ("http://[::1]:5000/cb", None, True),
        ("http://127.0.0.1/cb", None, False),
        ("https://127.0.0.1:5000/cb", None, False),
        ("http://127.0.0.2:5000/cb", None, False),
        ("http://user@127.0.0.1:5000/cb", None, False),
        ("http://127.0.0.1:5000/cb#x", None, False),
        ("http://127.0.0.1:99999/cb", None, False),
        ("cb", None, False),
        ("https://a.example/cb", ["https://a.example/cb"], True),
        ("https://a.example/cb/", ["https://a.example/cb"], False),
        ("http://127.0.0.1:7/cb", ["http://127.0.0.1:1/cb"], True),
        ("http://127.0.0.1:7/cb2", ["http://127.0.0.1:1/cb"], False),
        ("http://localhost:7/cb", ["http://localhost:1/cb"], False),
        ("http://127.0.0.1:7/cb", [], False),
    ],
)
def test_redirect_allowed(uri: str, registered: list[str] | None, allowed: bool) -> None:
    assert redirect_allowed(uri, registered) is allowed


def test_head_is_answered_like_get(connect: Connect) -> None:
    client = connect(fake().app)
    _, challenge = pkce()
    assert client.head("/authorize", params=request_params(challenge)).status_code == 200
    assert client.head("/device").status_code == 200
