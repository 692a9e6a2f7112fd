"""Wider world, leaky errors: echo_credentials_in_errors.

On, every error from a token endpoint quotes the request's Authorization header and raw body
in the provider's own description field, as a careless server does; off, nothing is quoted.
The status, the error code and the other headers stay what they were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

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
from tests.fakes.helpers import Connect, basic
from tests.fakes.world import AERION_TENANT, FLOWS, HIRO_CREDS

WRONG = "wr0ng+s3cret"
"""A wrong secret or password: it must show up in a leaky error and never in a kind one."""


@dataclass(frozen=True)
class ErrorCase:
    """One way to make one fake's token endpoint answer an error."""

    name: str
    make: Callable[..., FakeProvider]
    send: Callable[[httpx.Client], httpx.Response]
    description: Callable[[dict[str, Any]], str]
    canned: bool = False  # the error is a fail_next(…, body=None) answer


def _oauth_description(body: dict[str, Any]) -> str:
    return str(body["error_description"])


def _hiro_message(body: dict[str, Any]) -> str:
    return str(body["error"]["message"])


def _aerion_raw(body: dict[str, Any]) -> str:
    return str(body["raw"])


def error_code(body: dict[str, Any]) -> object:
    """``error`` of an OAuth-style body; HIRO's inner ``error.code``."""
    error = body["error"]
    return error["code"] if isinstance(error, dict) else error


def _form_cases(
    name: str, make: Callable[..., FakeProvider], path: str, client_id: str, secret: str
) -> list[ErrorCase]:
    """The four error kinds of a form token endpoint with Basic client authentication."""
    auth = {"Authorization": basic(client_id, secret)}
    wrong_auth = {"Authorization": basic(client_id, WRONG)}

    def post(form: dict[str, str], headers: dict[str, str]) -> Callable[[httpx.Client], Any]:
        return lambda client: client.post(path, data=form, headers=headers)

    describe = _oauth_description
    return [
        ErrorCase(
            f"{name}-bad-client",
            make,
            post({"grant_type": "client_credentials"}, wrong_auth),
            describe,
        ),
        ErrorCase(
            f"{name}-invalid-grant",
            make,
            post({"grant_type": "refresh_token", "refresh_token": WRONG}, auth),
            describe,
        ),
        ErrorCase(
            f"{name}-unsupported-grant",
            make,
            post({"grant_type": "urn:example:unknown"}, auth),
            describe,
        ),
        ErrorCase(
            f"{name}-canned",
            make,
            post({"grant_type": "password", "password": WRONG}, auth),
            describe,
            canned=True,
        ),
    ]


HIRO_BASIC = {"Authorization": basic(hiro.DEMO_CLIENT_ID, hiro.DEMO_CLIENT_SECRET)}
HIRO_LOGIN = {"username": hiro.DEMO_USERNAME, **HIRO_CREDS}
AERION_LOGIN = {"grant_type": "password", "username": aerion.DEMO_EMAIL}
AERION_BASIC = {**AERION_TENANT, "Authorization": basic(aerion.DEMO_CLIENT_ID, "public")}


def _hiro_cases() -> list[ErrorCase]:
    def app(client: httpx.Client) -> httpx.Response:
        return client.post("/api/auth/6/app", json={**HIRO_LOGIN, "password": WRONG})

    def refresh(client: httpx.Client) -> httpx.Response:
        body = {"refresh_token": WRONG, **HIRO_CREDS}
        return client.post("/api/auth/6/refresh", json=body, headers=HIRO_BASIC)

    def token(client: httpx.Client) -> httpx.Response:
        form = {"grant_type": "client_credentials", "scope": WRONG}
        return client.post("/api/auth/6.6/token", data=form, headers=HIRO_BASIC)

    return [
        ErrorCase("hiro-app-bad-password", FakeHiro, app, _hiro_message),
        ErrorCase("hiro-refresh-unknown-token", FakeHiro, refresh, _hiro_message),
        ErrorCase("hiro-token-unsupported-grant", FakeHiro, token, _hiro_message),
        ErrorCase("hiro-app-canned", FakeHiro, app, _hiro_message, canned=True),
    ]


def _aerion_cases() -> list[ErrorCase]:
    def post(form: dict[str, str]) -> Callable[[httpx.Client], httpx.Response]:
        return lambda client: client.post("/oauth2/token", data=form, headers=AERION_BASIC)

    def native(**kwargs: Any) -> FakeProvider:
        return FakeAerion(wrapped_errors=False, **kwargs)

    bad_password = post({**AERION_LOGIN, "password": WRONG})
    return [
        ErrorCase("aerion-bad-password", FakeAerion, bad_password, _aerion_raw),
        ErrorCase(
            "aerion-invalid-grant",
            FakeAerion,
            post({"grant_type": "refresh_token", "refresh_token": WRONG}),
            _aerion_raw,
        ),
        ErrorCase(
            "aerion-unsupported-grant",
            FakeAerion,
            post({"grant_type": "urn:example:unknown"}),
            _aerion_raw,
        ),
        ErrorCase("aerion-canned", FakeAerion, bad_password, _aerion_raw, canned=True),
        ErrorCase("aerion-native-bad-password", native, bad_password, _oauth_description),
    ]


CASES = [
    *_form_cases(
        "oauth2", FakeOAuth2, "/oauth/token", oauth2.DEMO_CLIENT_ID, oauth2.DEMO_CLIENT_SECRET
    ),
    *_form_cases(
        "hub", FakeHub, "/api/rest/oauth2/token", hub.DEMO_SERVICE_ID, hub.DEMO_SERVICE_SECRET
    ),
    *_hiro_cases(),
    *_aerion_cases(),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> ErrorCase:
    param: ErrorCase = request.param
    return param


def provoke(connect: Connect, case: ErrorCase, **switches: bool) -> httpx.Response:
    fake = case.make(**switches)
    client = connect(fake.app)
    if case.canned:
        fake.fail_next(1, 503)
    response = case.send(client)
    assert response.status_code >= 400, response.text
    return response


def test_errors_quote_the_credentials_only_when_switched_on(
    connect: Connect, case: ErrorCase
) -> None:
    """On: Authorization header and raw body verbatim in the description; off: neither."""
    kind = provoke(connect, case)
    leaky = provoke(connect, case, echo_credentials_in_errors=True)
    authorization = leaky.request.headers.get("authorization", "(none)")
    raw_body = leaky.request.content.decode()
    description = case.description(leaky.json())
    assert authorization in description
    assert raw_body in description
    assert authorization not in kind.text
    assert raw_body not in kind.text
    assert WRONG not in kind.text


def test_a_leaky_error_is_otherwise_the_same_answer(connect: Connect, case: ErrorCase) -> None:
    """Same status, same error code, same headers (WWW-Authenticate, no-store, type)."""
    kind = provoke(connect, case)
    leaky = provoke(connect, case, echo_credentials_in_errors=True)
    assert leaky.status_code == kind.status_code
    assert error_code(leaky.json()) == error_code(kind.json())
    same = ("content-type", "www-authenticate", "cache-control", "pragma")
    assert {h: leaky.headers.get(h) for h in same} == {h: kind.headers.get(h) for h in same}
    assert int(leaky.headers["content-length"]) == len(leaky.content)


def test_explicit_canned_bodies_and_successes_are_not_touched(connect: Connect) -> None:
    """Only the fake's own error bodies leak: a body given to fail_next is sent as given,
    and token answers and "me" errors carry nothing extra."""
    for flow in FLOWS:
        fake = flow.make(echo_credentials_in_errors=True)
        client = connect(fake.app)
        fake.fail_next(1, 503, {"error": "custom"})
        assert flow.login_request(client).json() == {"error": "custom"}
        success = flow.login_request(client)
        access, _ = flow.tokens(success)
        assert "request body" not in success.text
        fake.revoke_access_token(access)
        me = client.get(flow.me_path, headers={"Authorization": f"Bearer {access}"})
        assert me.status_code == 401
        assert access not in me.text


def test_the_switch_is_a_mutable_attribute(connect: Connect) -> None:
    """Flipped on a running fake, the next error leaks."""
    case = CASES[0]
    fake = case.make()
    client = connect(fake.app)
    assert WRONG not in case.send(client).text
    fake.echo_credentials_in_errors = True
    assert "request Authorization" in case.description(case.send(client).json())
