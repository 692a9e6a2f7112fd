"""broker.probe in process: the login outcomes the fakes do not easily produce, and token URLs."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from broker.core.errors import FailureKind, TokenEndpointError
from broker.probe import LoginResult, Outcome, failure_kind, token_url, try_logins
from broker.protocols import build_protocol
from tests.support import settings_from

HUB = "  hub:\n    type: hub\n    url: {url}\n    client_id: c\n    client_secret: s3cret-value\n"


@pytest.mark.parametrize(
    ("code", "kind", "said"),
    [
        ("invalid_client", FailureKind.REJECTED, "credentials refused"),
        ("endpoint_not_found", FailureKind.MISCONFIGURED, "endpoint not found"),
        ("unexpected_redirect", FailureKind.MISCONFIGURED, "redirected"),
        ("connect_error", FailureKind.TRANSIENT, "identity provider unreachable"),
        ("timeout", FailureKind.TRANSIENT, "identity provider unreachable"),
        ("network_error", FailureKind.TRANSIENT, "identity provider unreachable"),
        ("http_503", FailureKind.TRANSIENT, "identity provider error (may be temporary)"),
        ("invalid_response", FailureKind.TRANSIENT, "identity provider error (may be temporary)"),
    ],
)
def test_failure_kind(code: str, kind: FailureKind, said: str) -> None:
    assert failure_kind(TokenEndpointError("m", code=code, kind=kind)) == said


def logins(handler: httpx.MockTransport, url: str = "https://hub.example.com") -> list[LoginResult]:
    settings = settings_from("providers:\n" + HUB.format(url=url))

    async def collect() -> list[LoginResult]:
        return [result async for result in try_logins(settings, transport=handler)]

    return asyncio.run(collect())


def test_a_login_without_a_lifetime_says_the_default_was_assumed() -> None:
    answer = httpx.Response(200, json={"access_token": "tok-123", "token_type": "Bearer"})
    [result] = logins(httpx.MockTransport(lambda request: answer))
    assert result == LoginResult(
        "hub", Outcome.OK, "login OK (token valid 3600 s, assumed: the answer gave none)"
    )


def test_a_redirect_is_reported_with_its_target_without_its_query() -> None:
    answer = httpx.Response(302, headers={"Location": "https://sso.example.com/login?t=abc"})
    [result] = logins(httpx.MockTransport(lambda request: answer))
    assert result.outcome is Outcome.FAILED
    assert result.summary == "login FAILED: redirected (unexpected_redirect)"
    assert result.detail is not None
    assert "https://sso.example.com/login;" in result.detail
    assert "abc" not in result.detail


def test_the_primary_grant_is_sent_and_a_5xx_is_reported_as_maybe_temporary() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, json={"error": "temporarily_unavailable"})

    [result] = logins(httpx.MockTransport(answer))
    assert result.summary == (
        "login FAILED: identity provider error (may be temporary) (temporarily_unavailable)"
    )
    [request] = seen
    assert request.url == "https://hub.example.com/api/rest/oauth2/token"
    assert b"grant_type=client_credentials" in request.content


def test_token_url_of_a_provider_on_a_refresh_token_alone() -> None:
    settings = settings_from(
        "providers:\n  hiro:\n    type: hiro\n    url: https://idp.example.com\n"
        "    client_id: c\n    client_secret: s\n    refresh_token: rt-value\n"
    )
    protocol = build_protocol(settings.providers["hiro"])
    assert not protocol.can_login
    assert token_url(protocol) == "https://idp.example.com/api/auth/6/refresh"
