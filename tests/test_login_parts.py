"""The pure parts of a person's login: PKCE, the authorization request's URL, the redirect
back, and the logins in progress (one-time links, state, browser binding, expiry)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from broker.core.errors import ErrorCode, LoginError
from broker.engine.logins import LOGIN_TTL, MAX_PENDING, Logins
from broker.protocols.authorize import (
    AuthorizationEndpoint,
    LoginSecrets,
    read_redirect,
    redirect_of_url,
    s256_challenge,
)
from tests.support import FakeClock

REDIRECT = "http://127.0.0.1:8181/login/callback"
Params = dict[str, str]


def test_s256_challenge_is_rfc_7636s_example() -> None:
    """RFC 7636 Appendix B."""
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_login_secrets_are_fresh_and_fit_pkce() -> None:
    first, second = LoginSecrets.new(with_nonce=True), LoginSecrets.new(with_nonce=False)
    assert first.state != second.state
    assert first.verifier != second.verifier
    assert 43 <= len(first.verifier) <= 128  # RFC 7636 §4.1
    assert first.nonce is not None
    assert second.nonce is None
    assert first.state not in repr(first)
    assert first.verifier not in repr(first)


@pytest.mark.parametrize(
    ("url", "scope", "prompt", "params", "expected"),
    [
        pytest.param(
            "https://idp.example/authorize",
            None,
            None,
            {},
            {"response_type": "code", "client_id": "app", "code_challenge_method": "S256"},
            id="plain",
        ),
        pytest.param(
            "https://idp.example/authorize?tenant=acme",
            "openid offline_access",
            "consent",
            {"access_type": "offline"},
            {
                "tenant": "acme",
                "scope": "openid offline_access",
                "prompt": "consent",
                "access_type": "offline",
            },
            id="query-kept-and-extras",
        ),
        pytest.param(
            "https://idp.example/authorize?response_type=token",
            None,
            None,
            {"client_id": "other"},
            {"response_type": "code", "client_id": "app"},
            id="ours-win",
        ),
    ],
)
def test_the_authorization_request_url(
    url: str,
    scope: str | None,
    prompt: str | None,
    params: dict[str, str],
    expected: dict[str, str],
) -> None:
    endpoint = AuthorizationEndpoint(
        url=url, client_id="app", scope=scope, prompt=prompt, params=params
    )
    login = LoginSecrets.new(with_nonce=endpoint.wants_id_token)
    parts = urlsplit(endpoint.request_url(login, REDIRECT))
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert all(len(v) == 1 for v in parse_qs(parts.query).values())
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == url.split("?")[0]
    for key, value in expected.items():
        assert query[key] == value
    assert query["redirect_uri"] == REDIRECT
    assert query["state"] == login.state
    assert query["code_challenge"] == s256_challenge(login.verifier)
    assert "code_verifier" not in query
    assert ("nonce" in query) == endpoint.wants_id_token
    assert login.verifier not in parts.query


def test_a_redirect_is_read_from_a_query_or_a_pasted_url() -> None:
    got = redirect_of_url(f"  {REDIRECT}?code=c1&state=s1  \n")
    assert (got.code, got.state, got.error) == ("c1", "s1", None)
    refused = read_redirect({"error": "access_denied", "error_description": "no", "state": "s"})
    assert (refused.code, refused.error, refused.error_description) == (None, "access_denied", "no")
    assert read_redirect({"code": "", "state": ""}).state is None


def begin(logins: Logins) -> tuple[str, str]:
    attempt = logins.begin(
        "p", LoginSecrets.new(with_nonce=False), redirect_uri=REDIRECT, authorize_url="https://x/a"
    )
    return attempt.id, attempt.secrets.state


def code_of(call: object) -> ErrorCode:
    with pytest.raises(LoginError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code


def test_a_login_link_opens_once_and_binds_the_browser() -> None:
    logins = Logins(FakeClock())
    login_id, state = begin(logins)
    attempt, browser = logins.open(login_id)
    assert attempt.authorize_url == "https://x/a"
    assert code_of(lambda: logins.open(login_id)) == ErrorCode.LOGIN_EXPIRED  # used
    assert code_of(lambda: logins.open("nope")) == ErrorCode.LOGIN_NOT_FOUND
    # The callback: its state, and the cookie of the browser that opened the link.
    assert code_of(lambda: logins.take(state, browser="another")) == ErrorCode.LOGIN_NOT_FOUND
    assert code_of(lambda: logins.take(state)) == ErrorCode.LOGIN_NOT_FOUND
    assert code_of(lambda: logins.take("forged", browser=browser)) == ErrorCode.LOGIN_NOT_FOUND
    assert code_of(lambda: logins.take(None, browser=browser)) == ErrorCode.LOGIN_NOT_FOUND
    assert logins.take(state, browser=browser) is attempt
    assert code_of(lambda: logins.take(state, browser=browser)) == ErrorCode.LOGIN_EXPIRED  # replay


def test_a_pasted_redirect_is_bound_by_the_logins_id() -> None:
    logins = Logins(FakeClock())
    login_id, state = begin(logins)
    other_id, _ = begin(logins)
    assert code_of(lambda: logins.take(state, login_id=other_id)) == ErrorCode.LOGIN_NOT_FOUND
    assert logins.take(state, login_id=login_id).id == login_id


@pytest.mark.anyio
async def test_a_login_expires_after_ten_minutes() -> None:
    clock = FakeClock()
    logins = Logins(clock)
    login_id, state = begin(logins)
    _, browser = logins.open(login_id)
    await clock.advance(LOGIN_TTL)
    assert code_of(lambda: logins.take(state, browser=browser)) == ErrorCode.LOGIN_EXPIRED
    assert logins.get(login_id).outcome == "pending"  # still there to be asked about ...
    await clock.advance(LOGIN_TTL)
    assert code_of(lambda: logins.get(login_id)) == ErrorCode.LOGIN_NOT_FOUND  # ... then gone


def test_at_most_max_pending_logins_the_oldest_dropped() -> None:
    logins = Logins(FakeClock())
    first, _ = begin(logins)
    ids = [begin(logins)[0] for _ in range(MAX_PENDING)]
    assert code_of(lambda: logins.get(first)) == ErrorCode.LOGIN_NOT_FOUND
    assert all(logins.get(i).outcome == "pending" for i in ids)
