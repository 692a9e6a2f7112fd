"""FakeOAuth2's device authorization grant (RFC 8628)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from broker.fakes.device import DEVICE_CODE_GRANT, normalise_user_code
from broker.fakes.oauth2 import FakeOAuth2
from tests.fakes.helpers import Clock, Connect, basic
from tests.fakes.login import assert_form_page, query_of, verify_id_token

CLIENTS = {"tv": "tv-secret", "other": "other-secret"}
USERS = {"alice": "alice-pw"}
BASIC = {"Authorization": basic("tv", "tv-secret")}
USER_CODE = re.compile(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}")


def fake(clock: Clock, **kwargs: Any) -> FakeOAuth2:
    return FakeOAuth2(clients=CLIENTS, users=USERS, public_clients=["cli"], now=clock, **kwargs)


def start(
    client: httpx.Client, scope: str = "openid offline_access", **auth: Any
) -> dict[str, Any]:
    headers = auth.pop("headers", BASIC)
    response = client.post("/device_authorization", data={"scope": scope, **auth}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def poll(
    client: httpx.Client, device_code: str, headers: dict[str, str] | None = None, **form: str
) -> httpx.Response:
    data = {"grant_type": DEVICE_CODE_GRANT, "device_code": device_code, **form}
    return client.post("/oauth/token", data=data, headers=BASIC if headers is None else headers)


def assert_error(response: httpx.Response, error: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == error


def approve_over_http(
    client: httpx.Client, start_body: dict[str, Any], **form: str
) -> httpx.Response:
    """What the person does: open verification_uri_complete, fill in, click Approve."""
    url = urlsplit(start_body["verification_uri_complete"])
    page = client.get(url.path, params=query_of(start_body["verification_uri_complete"]))
    assert page.status_code == 200
    assert_form_page(page, "user_code", "username", "password", "approve", "deny")
    assert f'value="{start_body["user_code"]}"' in page.text
    data = {"user_code": start_body["user_code"], "username": "alice", "password": "alice-pw"}
    return client.post(url.path, data=data | {"action": "approve"} | form)


def test_device_authorization_response(connect: Connect, clock: Clock) -> None:
    """RFC 8628 §3.2: the six fields, absolute URIs, 600 s and 5 s by default."""
    f = fake(clock)
    client = connect(f.app)
    response = client.post("/device_authorization", data={"scope": "openid"}, headers=BASIC)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    assert USER_CODE.fullmatch(body["user_code"])
    base = str(client.base_url).rstrip("/")
    assert body["verification_uri"] == base + "/device"
    assert body["verification_uri_complete"] == f"{base}/device?user_code={body['user_code']}"
    assert body["expires_in"] == 600
    assert body["interval"] == 5
    assert len(f.device_requests()) == 1
    other = FakeOAuth2(device_code_ttl=30, device_interval=2)
    body = (
        connect(other.app)
        .post("/device_authorization", data={"client_id": "demo-public-client"})
        .json()
    )
    assert (body["expires_in"], body["interval"]) == (30, 2)


def test_pending_slow_down_approved_then_tokens_once(connect: Connect, clock: Clock) -> None:
    """authorization_pending, slow_down (+5 s), the person approves, tokens, invalid_grant."""
    f = fake(clock)
    client = connect(f.app)
    body = start(client)
    code = body["device_code"]
    assert_error(poll(client, code), "authorization_pending")
    clock.advance(4.9)
    assert_error(poll(client, code), "slow_down")  # 4.9 s < 5 s
    clock.advance(5)
    assert_error(poll(client, code), "slow_down")  # 5 s < 10 s, the interval after one
    clock.advance(14.9)
    assert_error(poll(client, code), "slow_down")  # 14.9 s < 15 s
    clock.advance(20)
    assert_error(poll(client, code), "authorization_pending")  # 20 s = the interval now
    approved = approve_over_http(client, body)
    assert approved.status_code == 200
    assert "Device connected" in approved.text
    clock.advance(10)
    tokens = poll(client, code)
    assert tokens.status_code == 200, tokens.text
    granted = tokens.json()
    assert set(granted) >= {"access_token", "refresh_token", "id_token", "expires_in"}
    assert granted["token_type"] == "Bearer"
    assert f.is_access_token_valid(granted["access_token"])
    claims = verify_id_token(
        granted["id_token"],
        client.get("/jwks").json(),
        issuer=str(client.base_url).rstrip("/"),
        audience="tv",
        now=clock(),
        sub="alice",
    )
    assert claims["auth_time"] == int(clock()) - 10
    clock.advance(10)
    assert_error(poll(client, code), "invalid_grant")
    assert len(f.token_requests(DEVICE_CODE_GRANT)) == 7


def test_an_approved_code_is_answered_at_once(connect: Connect, clock: Clock) -> None:
    """slow_down is for pending codes: the poll right after approval gets the tokens."""
    f = fake(clock)
    client = connect(f.app)
    body = start(client, scope="read")
    assert_error(poll(client, body["device_code"]), "authorization_pending")
    f.approve_device(body["user_code"], "alice")
    response = poll(client, body["device_code"])
    assert response.status_code == 200
    assert "id_token" not in response.json()
    assert response.json()["scope"] == "read"


def test_expired_token_after_expires_in(connect: Connect, clock: Clock) -> None:
    f = fake(clock)
    client = connect(f.app)
    body = start(client)
    clock.advance(599.9)
    assert_error(poll(client, body["device_code"]), "authorization_pending")
    clock.advance(0.1)
    assert_error(poll(client, body["device_code"]), "expired_token")
    with pytest.raises(KeyError):
        f.approve_device(body["user_code"], "alice")
    late = approve_over_http(client, body)
    assert late.status_code == 400
    assert "Unknown or expired code" in late.text


def test_deny_over_http_is_access_denied(connect: Connect, clock: Clock) -> None:
    f = fake(clock)
    client = connect(f.app)
    body = start(client)
    denied = client.post("/device", data={"user_code": body["user_code"], "action": "deny"})
    assert denied.status_code == 200
    assert "Access denied" in denied.text
    assert_error(poll(client, body["device_code"]), "access_denied")
    clock.advance(60)
    assert_error(poll(client, body["device_code"]), "access_denied")
    assert f.issued_access_tokens == []


def test_deny_device_helper(connect: Connect, clock: Clock) -> None:
    f = fake(clock)
    client = connect(f.app)
    body = start(client)
    f.deny_device(body["user_code"].lower())
    assert_error(poll(client, body["device_code"]), "access_denied")
    with pytest.raises(KeyError):
        f.deny_device("BBBB-BBBB")


def test_the_verification_page_reads_codes_as_people_type_them(
    connect: Connect, clock: Clock
) -> None:
    """RFC 8628 §6.1: case and punctuation do not matter; wrong passwords and codes do."""
    f = fake(clock)
    client = connect(f.app)
    body = start(client)
    typed = body["user_code"].lower().replace("-", " ")
    wrong = client.post(
        "/device",
        data={"user_code": typed, "username": "alice", "password": "x", "action": "approve"},
    )
    assert wrong.status_code == 401
    assert "Wrong username or password" in wrong.text
    assert_error(poll(client, body["device_code"]), "authorization_pending")
    unknown = client.post(
        "/device",
        data={
            "user_code": "BCDF-GHJK",
            "username": "alice",
            "password": "alice-pw",
            "action": "approve",
        },
    )
    assert unknown.status_code == 400
    ok = client.post(
        "/device",
        data={"user_code": typed, "username": "alice", "password": "alice-pw", "action": "approve"},
    )
    assert ok.status_code == 200
    clock.advance(5)
    assert poll(client, body["device_code"]).status_code == 200
    assert normalise_user_code(" bcdf-ghjk ") == "BCDF-GHJK"


def test_device_codes_are_bound_to_their_client(connect: Connect, clock: Clock) -> None:
    f = fake(clock)
    client = connect(f.app)
    body = start(client)
    f.approve_device(body["user_code"], "alice")
    other = {"Authorization": basic("other", "other-secret")}
    assert_error(poll(client, body["device_code"], headers=other), "invalid_grant")
    assert_error(poll(client, "no-such-code"), "invalid_grant")
    assert_error(poll(client, ""), "invalid_request")
    assert poll(client, body["device_code"]).status_code == 200


def test_public_clients_and_client_authentication(connect: Connect, clock: Clock) -> None:
    """The device endpoint authenticates clients as the token endpoint does."""
    f = fake(clock)
    client = connect(f.app)
    body = start(client, headers={}, client_id="cli")
    f.approve_device(body["user_code"], "alice")
    assert poll(client, body["device_code"], headers={}, client_id="cli").status_code == 200
    refused = client.post("/device_authorization", headers={"Authorization": basic("tv", "wrong")})
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    assert "www-authenticate" in refused.headers
    assert client.post("/device_authorization").json()["error"] == "invalid_client"
    assert len(f.device_requests()) == 3
