"""Provider protocols: exact token requests, response parsing and error classification."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from pydantic import SecretStr

from broker.core.errors import FailureKind, TokenEndpointError
from broker.protocols import TokenProtocol, build_protocol
from broker.protocols.base import (
    MAX_ERROR_TEXT,
    basic_auth,
    basic_credentials,
    classify_http_error,
    error_fields,
    jwt_expiry,
    parse_lifetime,
    retry_after_seconds,
    secrets_sent,
)
from broker.protocols.hiro import HiroAppProtocol
from broker.protocols.oauth2 import OAuth2Protocol
from broker.protocols.presets import join_url
from tests.support import settings_from

TRANSIENT = FailureKind.TRANSIENT
REJECTED = FailureKind.REJECTED
MISCONFIGURED = FailureKind.MISCONFIGURED
WALL = 1_800_000_000.0
"""The wall clock (Unix seconds) when a response arrives, unless a row says otherwise."""

FORM = "application/x-www-form-urlencoded"


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def make_jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped token (unsigned; nobody checks the signature)."""
    return f"{b64url({'alg': 'RS256'})}.{b64url(claims)}.c2lnbmF0dXJl"


def basic(raw: str) -> str:
    return "Basic " + base64.b64encode(raw.encode()).decode()


def protocol(text: str) -> TokenProtocol:
    """The protocol for the one provider configured in *text*."""
    [config] = settings_from(text).providers.values()
    return build_protocol(config)


def form_of(request: httpx.Request) -> dict[str, str]:
    pairs = parse_qsl(request.content.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    form = dict(pairs)
    assert len(form) == len(pairs), "a form parameter is sent twice"
    return form


# --- provider configs ----------------------------------------------------------------------

HIRO_APP = """
providers:
  hiro:
    type: hiro
    url: https://core.arago.test/
    client_id: c0123_abc
    client_secret: csecret
    username: user@company.co
    password: "12345678"
"""

HIRO_APP_SEEDED = """
providers:
  hiro:
    type: hiro
    url: https://core.arago.test
    auth_api: /api/6/auth/
    client_id: c0123_abc
    client_secret: csecret
    refresh_token: seeded-rt
"""

HIRO_TOKEN = """
providers:
  hiro:
    type: hiro
    url: https://core.arago.test
    auth_api: /api/auth/6.6
    flow: token
    client_id: c0123_abc
    client_secret: csecret
    username: user@company.co
    password: "12345678"
"""

HIRO_TOKEN_POST = HIRO_TOKEN + "    client_auth: client_secret_post\n"

HIRO_TOKEN_DEFAULT_PATH = """
providers:
  hiro:
    type: hiro
    url: https://core.arago.test
    flow: token
    client_id: c0123_abc
    client_secret: csecret
    refresh_token: seeded-rt
"""

AERION = """
providers:
  aerion:
    type: aerion
    company_url: https://acme.aerion.app/
    username: jd@example.com
    password: pw
"""

AERION_ORIGIN = """
providers:
  aerion:
    type: aerion
    url: https://acme.aerion.app
    company_url: https://acme.aerion.app
    tenant_header: origin
    client_id: my-sidecar
    client_secret: anything
    refresh_token: from-sso
"""

HUB_PASSWORD = """
providers:
  hub:
    type: hub
    url: https://acme.youtrack.cloud/hub
    client_id: svc-id
    client_secret: svc-secret
    scope: 0-0-0-0-0 yt-id
    username: john.doe
    password: A3ddj3w
"""

HUB_CLIENT = """
providers:
  hub:
    type: hub
    url: https://hub.example.com
    client_id: svc-id
    client_secret: svc-secret
    scope: 0-0-0-0-0
"""

HUB_CLIENT_NO_SCOPE = """
providers:
  hub:
    type: hub
    url: https://hub.example.com
    client_id: svc-id
    client_secret: svc-secret
"""

HUB_FORCED_CLIENT_CREDENTIALS = HUB_PASSWORD + "    grant: client_credentials\n"

HUB_SEEDED = """
providers:
  hub:
    type: hub
    url: https://hub.example.com
    client_id: svc-id
    client_secret: svc-secret
    refresh_token: seeded-rt
"""

OAUTH2_BASIC = """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/oauth/token
    grant: client_credentials
    client_id: my app
    client_secret: "p@ss:w/rd"
    scope: read write
    audience: https://api.test
    extra_params:
      resource: https://api.test/v1
    headers:
      X-Tenant: acme
"""

OAUTH2_POST = """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: password
    client_id: app
    client_secret: app-secret
    client_auth: client_secret_post
    username: alice
    password: alice-password
"""

OAUTH2_PUBLIC = """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: password
    client_id: public-app
    username: alice
    password: alice-password
"""

OAUTH2_NO_CLIENT = """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: password
    username: alice
    password: alice-password
"""

OAUTH2_EXTRA_CANNOT_OVERRIDE = """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: client_credentials
    client_id: app
    client_secret: app-secret
    scope: mine
    audience: https://api.test
    extra_params:
      grant_type: password
      scope: theirs
      audience: https://other.test
"""

OAUTH2_SEEDED = """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: refresh_token
    client_id: app
    client_secret: app-secret
    refresh_token: seeded-rt
"""

OAUTH2_RT = OAUTH2_POST
"""An OAuth2 provider whose secrets are app-secret and alice-password."""

# --- building requests ---------------------------------------------------------------------

JSON_HEADERS = {"accept": "text/plain, application/json", "content-type": "application/json"}
FORM_HEADERS = {"accept": "application/json", "content-type": FORM}


@pytest.mark.parametrize(
    ("text", "refresh", "url", "headers", "body"),
    [
        pytest.param(
            HIRO_APP,
            False,
            "https://core.arago.test/api/auth/6/app",
            JSON_HEADERS,
            {
                "client_id": "c0123_abc",
                "client_secret": "csecret",
                "username": "user@company.co",
                "password": "12345678",
            },
            id="hiro-app-login",
        ),
        pytest.param(
            HIRO_APP,
            True,
            "https://core.arago.test/api/auth/6/refresh",
            JSON_HEADERS,
            {"client_id": "c0123_abc", "client_secret": "csecret", "refresh_token": "rt-1"},
            id="hiro-app-refresh",
        ),
        pytest.param(
            HIRO_APP_SEEDED,
            True,
            "https://core.arago.test/api/6/auth/refresh",
            JSON_HEADERS,
            {"client_id": "c0123_abc", "client_secret": "csecret", "refresh_token": "rt-1"},
            id="hiro-app-legacy-auth-api",
        ),
        pytest.param(
            HIRO_TOKEN,
            False,
            "https://core.arago.test/api/auth/6.6/token",
            FORM_HEADERS | {"authorization": basic("c0123_abc:csecret")},
            {"grant_type": "password", "username": "user@company.co", "password": "12345678"},
            id="hiro-token-login",
        ),
        pytest.param(
            HIRO_TOKEN,
            True,
            "https://core.arago.test/api/auth/6.6/token",
            FORM_HEADERS | {"authorization": basic("c0123_abc:csecret")},
            {"grant_type": "refresh_token", "refresh_token": "rt-1"},
            id="hiro-token-refresh",
        ),
        pytest.param(
            HIRO_TOKEN_POST,
            False,
            "https://core.arago.test/api/auth/6.6/token",
            FORM_HEADERS,
            {
                "grant_type": "password",
                "username": "user@company.co",
                "password": "12345678",
                "client_id": "c0123_abc",
                "client_secret": "csecret",
            },
            id="hiro-token-login-client-secret-post",
        ),
        pytest.param(
            HIRO_TOKEN_DEFAULT_PATH,
            True,
            "https://core.arago.test/api/auth/6/token",
            FORM_HEADERS | {"authorization": basic("c0123_abc:csecret")},
            {"grant_type": "refresh_token", "refresh_token": "rt-1"},
            id="hiro-token-default-auth-api",
        ),
        pytest.param(
            AERION,
            False,
            "https://api.aerion.app/oauth2/token",
            FORM_HEADERS | {"companyurl": "https://acme.aerion.app"},
            {
                "grant_type": "password",
                "username": "jd@example.com",
                "password": "pw",
                "client_id": "credential-broker",
                "client_secret": "public",
            },
            id="aerion-login",
        ),
        pytest.param(
            AERION,
            True,
            "https://api.aerion.app/oauth2/token",
            FORM_HEADERS | {"companyurl": "https://acme.aerion.app"},
            {
                "grant_type": "refresh_token",
                "refresh_token": "rt-1",
                "client_id": "credential-broker",
                "client_secret": "public",
            },
            id="aerion-refresh",
        ),
        pytest.param(
            AERION_ORIGIN,
            True,
            "https://acme.aerion.app/oauth2/token",
            FORM_HEADERS | {"origin": "https://acme.aerion.app"},
            {
                "grant_type": "refresh_token",
                "refresh_token": "rt-1",
                "client_id": "my-sidecar",
                "client_secret": "anything",
            },
            id="aerion-origin-header-company-host",
        ),
        pytest.param(
            HUB_PASSWORD,
            False,
            "https://acme.youtrack.cloud/hub/api/rest/oauth2/token",
            FORM_HEADERS | {"authorization": basic("svc-id:svc-secret")},
            {
                "grant_type": "password",
                "username": "john.doe",
                "password": "A3ddj3w",
                "scope": "0-0-0-0-0 yt-id",
                "access_type": "offline",
            },
            id="hub-password-login-offline",
        ),
        pytest.param(
            HUB_PASSWORD,
            True,
            "https://acme.youtrack.cloud/hub/api/rest/oauth2/token",
            FORM_HEADERS | {"authorization": basic("svc-id:svc-secret")},
            {"grant_type": "refresh_token", "refresh_token": "rt-1", "scope": "0-0-0-0-0 yt-id"},
            id="hub-refresh-no-access-type",
        ),
        pytest.param(
            HUB_CLIENT,
            False,
            "https://hub.example.com/api/rest/oauth2/token",
            FORM_HEADERS | {"authorization": basic("svc-id:svc-secret")},
            {"grant_type": "client_credentials", "scope": "0-0-0-0-0"},
            id="hub-client-credentials",
        ),
        pytest.param(
            HUB_CLIENT_NO_SCOPE,
            False,
            "https://hub.example.com/api/rest/oauth2/token",
            FORM_HEADERS | {"authorization": basic("svc-id:svc-secret")},
            {"grant_type": "client_credentials"},
            id="hub-client-credentials-no-scope",
        ),
        pytest.param(
            HUB_FORCED_CLIENT_CREDENTIALS,
            False,
            "https://acme.youtrack.cloud/hub/api/rest/oauth2/token",
            FORM_HEADERS | {"authorization": basic("svc-id:svc-secret")},
            {"grant_type": "client_credentials", "scope": "0-0-0-0-0 yt-id"},
            id="hub-explicit-client-credentials-ignores-user",
        ),
        pytest.param(
            HUB_SEEDED,
            True,
            "https://hub.example.com/api/rest/oauth2/token",
            FORM_HEADERS | {"authorization": basic("svc-id:svc-secret")},
            {"grant_type": "refresh_token", "refresh_token": "rt-1"},
            id="hub-seeded-refresh",
        ),
        pytest.param(
            OAUTH2_BASIC,
            False,
            "https://idp.test/oauth/token",
            FORM_HEADERS | {"authorization": basic("my+app:p%40ss%3Aw%2Frd"), "x-tenant": "acme"},
            {
                "grant_type": "client_credentials",
                "scope": "read write",
                "resource": "https://api.test/v1",
                "audience": "https://api.test",
            },
            id="oauth2-basic-login",
        ),
        pytest.param(
            OAUTH2_BASIC,
            True,
            "https://idp.test/oauth/token",
            FORM_HEADERS | {"authorization": basic("my+app:p%40ss%3Aw%2Frd"), "x-tenant": "acme"},
            {
                "grant_type": "refresh_token",
                "refresh_token": "rt-1",
                "scope": "read write",
                "resource": "https://api.test/v1",
                "audience": "https://api.test",
            },
            id="oauth2-basic-refresh",
        ),
        pytest.param(
            OAUTH2_POST,
            False,
            "https://idp.test/token",
            FORM_HEADERS,
            {
                "grant_type": "password",
                "username": "alice",
                "password": "alice-password",
                "client_id": "app",
                "client_secret": "app-secret",
            },
            id="oauth2-post-login",
        ),
        pytest.param(
            OAUTH2_POST,
            True,
            "https://idp.test/token",
            FORM_HEADERS,
            {
                "grant_type": "refresh_token",
                "refresh_token": "rt-1",
                "client_id": "app",
                "client_secret": "app-secret",
            },
            id="oauth2-post-refresh",
        ),
        pytest.param(
            OAUTH2_PUBLIC,
            False,
            "https://idp.test/token",
            FORM_HEADERS,
            {
                "grant_type": "password",
                "username": "alice",
                "password": "alice-password",
                "client_id": "public-app",
            },
            id="oauth2-public-client-id-in-body",
        ),
        pytest.param(
            OAUTH2_NO_CLIENT,
            False,
            "https://idp.test/token",
            FORM_HEADERS,
            {"grant_type": "password", "username": "alice", "password": "alice-password"},
            id="oauth2-no-client-authentication",
        ),
        pytest.param(
            OAUTH2_EXTRA_CANNOT_OVERRIDE,
            False,
            "https://idp.test/token",
            FORM_HEADERS | {"authorization": basic("app:app-secret")},
            {"grant_type": "client_credentials", "scope": "mine", "audience": "https://other.test"},
            id="oauth2-extra-params-never-override",
        ),
        pytest.param(
            OAUTH2_SEEDED,
            True,
            "https://idp.test/token",
            FORM_HEADERS | {"authorization": basic("app:app-secret")},
            {"grant_type": "refresh_token", "refresh_token": "rt-1"},
            id="oauth2-seeded-refresh",
        ),
    ],
)
def test_request(
    text: str, refresh: bool, url: str, headers: dict[str, str], body: dict[str, str]
) -> None:
    """Each preset builds exactly this POST: URL, headers, JSON or form body."""
    proto = protocol(text)
    request = proto.refresh_request("rt-1") if refresh else proto.login_request()
    assert request.method == "POST"
    assert str(request.url) == url
    sent = dict(request.headers)
    assert sent.pop("content-length") == str(len(request.content))
    assert sent == {"host": request.url.netloc.decode()} | headers
    if headers["content-type"] == "application/json":
        assert json.loads(request.content) == body
    else:
        assert form_of(request) == body


def provider_yaml(kind: str, **keys: str) -> str:
    """One provider *p* of type *kind* with credentials that make it valid, plus *keys*."""
    credentials = {
        "hiro": {"client_id": "c", "client_secret": "s", "username": "u", "password": "pw"},
        "aerion": {"company_url": "https://acme.aerion.app", "username": "u", "password": "pw"},
        "hub": {"client_id": "c", "client_secret": "s"},
        "oauth2": {"grant": "client_credentials", "client_id": "c", "client_secret": "s"},
    }[kind]
    lines = "".join(f"    {k}: {v}\n" for k, v in (credentials | keys).items())
    return f"providers:\n  p:\n    type: {kind}\n{lines}"


@pytest.mark.parametrize(
    ("text", "url"),
    [
        pytest.param(
            provider_yaml("oauth2", token_url="https://idp.test/o/token/"),
            "https://idp.test/o/token/",
            id="oauth2-trailing-slash-kept",
        ),
        pytest.param(
            provider_yaml("oauth2", token_url="https://idp.test/t/token?tenant=blue&v=2"),
            "https://idp.test/t/token?tenant=blue&v=2",
            id="oauth2-query-kept",
        ),
        pytest.param(
            provider_yaml("oauth2", token_url="http://127.0.0.1:8080/token/?x="),
            "http://127.0.0.1:8080/token/?x=",
            id="oauth2-slash-and-empty-query-kept",
        ),
        pytest.param(
            provider_yaml("hub", url="https://x.youtrack.cloud/hub/"),
            "https://x.youtrack.cloud/hub/api/rest/oauth2/token",
            id="hub-prefix-trailing-slash",
        ),
        pytest.param(
            provider_yaml("hub", url="https://x.youtrack.cloud/hub"),
            "https://x.youtrack.cloud/hub/api/rest/oauth2/token",
            id="hub-prefix",
        ),
        pytest.param(
            provider_yaml("hub", url="https://hub.test:8443/"),
            "https://hub.test:8443/api/rest/oauth2/token",
            id="hub-root-slash",
        ),
        pytest.param(
            provider_yaml("aerion", url="https://api.aerion.app/"),
            "https://api.aerion.app/oauth2/token",
            id="aerion-slash",
        ),
        pytest.param(
            provider_yaml("hiro", url="https://core.test/", auth_api="api/auth/6.6", flow="token"),
            "https://core.test/api/auth/6.6/token",
            id="hiro-token-auth-api-without-slashes",
        ),
        pytest.param(
            provider_yaml("hiro", url="https://core.test/hiro", auth_api="/api/auth/6.6/"),
            "https://core.test/hiro/api/auth/6.6/app",
            id="hiro-app-auth-api-with-slashes",
        ),
        pytest.param(
            provider_yaml("hiro", url="https://core.test//", auth_api="/"),
            "https://core.test/app",
            id="hiro-empty-auth-api",
        ),
    ],
)
def test_endpoint_url(text: str, url: str) -> None:
    """token_url is requested exactly as written; presets join their path to the base URL."""
    request = protocol(text).login_request()
    assert str(request.url) == url
    assert "grant_type" not in str(request.url)  # the form stays in the body


@pytest.mark.parametrize(
    ("base", "paths", "expected"),
    [
        ("https://h.test", ("/oauth2/token",), "https://h.test/oauth2/token"),
        ("https://h.test/", ("/oauth2/token",), "https://h.test/oauth2/token"),
        (
            "https://h.test/hub/",
            ("/api/rest/oauth2/token",),
            "https://h.test/hub/api/rest/oauth2/token",
        ),
        (
            "https://h.test/hub",
            ("api/rest/oauth2/token",),
            "https://h.test/hub/api/rest/oauth2/token",
        ),
        ("https://h.test", ("/api/auth/6.6/", "token"), "https://h.test/api/auth/6.6/token"),
        ("https://h.test", ("api/auth/6", "/app"), "https://h.test/api/auth/6/app"),
        ("https://h.test/", ("", "/", "app"), "https://h.test/app"),
        ("https://h.test", (), "https://h.test"),
        ("http://127.0.0.1:9/a//", ("//b//",), "http://127.0.0.1:9/a/b"),
    ],
)
def test_join_url(base: str, paths: tuple[str, ...], expected: str) -> None:
    """One slash between base and each path, whatever slashes either side has."""
    assert join_url(base, *paths) == expected


@pytest.mark.parametrize(
    ("text", "can_login"),
    [
        pytest.param(HIRO_APP, True, id="hiro-app-user"),
        pytest.param(HIRO_APP_SEEDED, False, id="hiro-app-seeded"),
        pytest.param(HIRO_TOKEN, True, id="hiro-token-user"),
        pytest.param(HIRO_TOKEN_DEFAULT_PATH, False, id="hiro-token-seeded"),
        pytest.param(AERION, True, id="aerion-user"),
        pytest.param(AERION_ORIGIN, False, id="aerion-seeded"),
        pytest.param(HUB_PASSWORD, True, id="hub-password"),
        pytest.param(HUB_CLIENT, True, id="hub-client-credentials"),
        pytest.param(HUB_SEEDED, False, id="hub-seeded"),
        pytest.param(OAUTH2_BASIC, True, id="oauth2-client-credentials"),
        pytest.param(OAUTH2_SEEDED, False, id="oauth2-seeded"),
    ],
)
def test_can_login(text: str, can_login: bool) -> None:
    """A provider with only a seeded refresh token has no primary grant to fall back to."""
    assert protocol(text).can_login is can_login


def test_hiro_app_login_without_user_refuses() -> None:
    """HIRO /app cannot log in without username and password (config prevents it)."""
    with pytest.raises(ValueError, match="without username and password"):
        protocol(HIRO_APP_SEEDED).login_request()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            HIRO_APP,
            "hiro: password login as user@company.co at POST"
            " https://core.arago.test/api/auth/6/app, refresh at POST"
            " https://core.arago.test/api/auth/6/refresh",
            id="hiro-app",
        ),
        pytest.param(
            HUB_CLIENT,
            "hub: client_credentials grant at POST https://hub.example.com/api/rest/oauth2/token"
            " (client_secret_basic, scope '0-0-0-0-0')",
            id="hub",
        ),
        pytest.param(
            OAUTH2_NO_CLIENT,
            "oauth2: password grant as alice at POST https://idp.test/token"
            " (no client authentication)",
            id="oauth2-no-client",
        ),
    ],
)
def test_describe(text: str, expected: str) -> None:
    """describe() says grant, endpoint and client authentication, without secrets."""
    assert protocol(text).describe() == expected


# --- pure helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "client_secret", "expected"),
    [
        pytest.param("app", "secret", "Basic YXBwOnNlY3JldA==", id="plain"),
        # "my+app:p%40ss%3Aw%2Frd": space → +, reserved characters percent-encoded.
        pytest.param(
            "my app", "p@ss:w/rd", "Basic bXkrYXBwOnAlNDBzcyUzQXclMkZyZA==", id="reserved"
        ),
        # "a%2Bb:%3D%26%25": a literal + must not turn into a space on the server.
        pytest.param("a+b", "=&%", "Basic YSUyQmI6JTNEJTI2JTI1", id="plus-and-percent"),
        # "%C3%A4:%E2%82%AC": UTF-8 before percent-encoding.
        pytest.param("ä", "€", "Basic JUMzJUE0OiVFMiU4MiVBQw==", id="non-ascii"),
        pytest.param("app", "", "Basic YXBwOg==", id="empty-secret"),
    ],
)
def test_basic_auth(client_id: str, client_secret: str, expected: str) -> None:
    """RFC 6749 §2.3.1: both parts are form-urlencoded before Base64."""
    assert basic_auth(client_id, client_secret) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(3600, 3600.0, id="int"),
        pytest.param(59.5, 59.5, id="float"),
        pytest.param(0, 0.0, id="zero"),
        pytest.param("3600", 3600.0, id="numeric-string"),
        pytest.param(" 60 ", 60.0, id="padded-string"),
        pytest.param("3600.5", 3600.5, id="decimal-string"),
        pytest.param(None, None, id="none"),
        pytest.param(True, None, id="true"),
        pytest.param(False, None, id="false"),
    ],
)
def test_parse_lifetime(value: object, expected: float | None) -> None:
    """expires_in may be a number or a numeric string; None and booleans mean 'not given'."""
    assert parse_lifetime(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("soon", id="word"),
        pytest.param("", id="empty"),
        pytest.param("1e3", id="exponent"),
        pytest.param("-5", id="negative-string"),
        pytest.param("3600s", id="unit"),
        pytest.param([3600], id="list"),
        pytest.param({"seconds": 3600}, id="dict"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="infinity"),
        pytest.param(-5, id="negative-number"),
    ],
)
def test_parse_lifetime_garbage(value: object) -> None:
    """Anything else is a transient invalid_response."""
    with pytest.raises(TokenEndpointError) as info:
        parse_lifetime(value)
    assert info.value.code == "invalid_response"
    assert info.value.kind is TRANSIENT


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        pytest.param(make_jwt({"exp": 1800003600}), 1800003600.0, id="exp-int"),
        pytest.param(make_jwt({"exp": 1800003600.5}), 1800003600.5, id="exp-float"),
        pytest.param(
            make_jwt({"exp": 1588926997, "sub": "identityId", "data": {"default-scope": "s"}}),
            1588926997.0,
            id="hiro-payload",
        ),
        pytest.param(make_jwt({"sub": "x"}), None, id="no-exp"),
        pytest.param(make_jwt({"exp": "1800003600"}), None, id="exp-string"),
        pytest.param(make_jwt({"exp": True}), None, id="exp-bool"),
        pytest.param(make_jwt({"exp": None}), None, id="exp-null"),
        pytest.param("59d8cb89af1fc22a141066b8e71337c4abfee434", None, id="opaque-hex"),
        pytest.param("1700000000000.0-0-0-0-0.abcDEF123", None, id="hub-dotted-opaque"),
        pytest.param("a.b", None, id="two-parts"),
        pytest.param(make_jwt({"exp": 1}) + ".x", None, id="four-parts"),
        pytest.param("h.!!!!.s", None, id="payload-not-base64"),
        pytest.param("h.bm90IGpzb24.s", None, id="payload-not-json"),
        pytest.param("h.WzFd.s", None, id="payload-json-list"),
        pytest.param("h.//79.s", None, id="payload-not-utf8"),
        pytest.param("h.a.s", None, id="payload-bad-length"),
        pytest.param("", None, id="empty"),
    ],
)
def test_jwt_expiry(token: str, expected: float | None) -> None:
    """The exp claim of a JWT-shaped token, or None for anything else."""
    assert jwt_expiry(token) == expected


@pytest.fixture
def non_utc_local_time() -> Iterator[None]:
    """Run with local time five hours behind UTC, so zone mistakes show."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ+05"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


HTTP_DATE_WALL = 1445412480.0
"""Wed, 21 Oct 2015 07:28:00 GMT."""


@pytest.mark.usefixtures("non_utc_local_time")
@pytest.mark.parametrize(
    ("headers", "wall_now", "expected"),
    [
        pytest.param({}, WALL, None, id="absent"),
        pytest.param({"Retry-After": "120"}, WALL, 120.0, id="delta"),
        pytest.param({"Retry-After": " 7 "}, WALL, 7.0, id="delta-padded"),
        pytest.param({"Retry-After": "0"}, WALL, 0.0, id="delta-zero"),
        pytest.param(
            {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
            HTTP_DATE_WALL - 30,
            30.0,
            id="http-date",
        ),
        pytest.param(
            {"Retry-After": "Wednesday, 21-Oct-15 07:28:00 GMT"},
            HTTP_DATE_WALL - 30,
            30.0,
            id="rfc850-date",
        ),
        pytest.param(
            {"Retry-After": "Wed Oct 21 07:28:00 2015"},
            HTTP_DATE_WALL - 30,
            30.0,
            id="asctime-date-is-utc",
        ),
        pytest.param(
            {"Retry-After": "Wed, 21 Oct 2015 07:28:00 -0000"},
            HTTP_DATE_WALL - 30,
            30.0,
            id="minus-zero-zone-is-utc",
        ),
        pytest.param(
            {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
            HTTP_DATE_WALL + 10,
            0.0,
            id="date-in-past",
        ),
        pytest.param({"Retry-After": "soon"}, WALL, None, id="garbage"),
        pytest.param({"Retry-After": "1.5"}, WALL, None, id="fraction"),
        pytest.param({"Retry-After": "-3"}, WALL, None, id="negative"),
        pytest.param({"Retry-After": ""}, WALL, None, id="empty"),
        pytest.param(
            {"Retry-After": "Wed, 32 Oct 2015 07:28:00 GMT"}, WALL, None, id="impossible-date"
        ),
    ],
)
def test_retry_after_seconds(
    headers: dict[str, str], wall_now: float, expected: float | None
) -> None:
    """Retry-After as seconds from now: a delta, or an HTTP date against the wall clock."""
    assert retry_after_seconds(httpx.Headers(headers), wall_now) == expected


HIRO_401 = frozenset({401})


@pytest.mark.parametrize(
    ("status", "code", "refreshing", "rejected_statuses", "expected"),
    [
        # Transient: the identity provider's trouble, retry with backoff.
        pytest.param(500, None, False, frozenset(), (TRANSIENT, False), id="500"),
        pytest.param(502, None, True, HIRO_401, (TRANSIENT, False), id="502-refresh"),
        pytest.param(503, "invalid_grant", True, frozenset(), (TRANSIENT, False), id="503-wins"),
        pytest.param(429, None, False, frozenset(), (TRANSIENT, False), id="429"),
        pytest.param(408, None, True, frozenset(), (TRANSIENT, False), id="408"),
        pytest.param(425, None, False, frozenset(), (TRANSIENT, False), id="425"),
        pytest.param(
            400, "server_error", False, frozenset(), (TRANSIENT, False), id="server_error"
        ),
        pytest.param(
            400, "temporarily_unavailable", True, frozenset(), (TRANSIENT, False), id="temp-unavail"
        ),
        pytest.param(400, "slow_down", False, frozenset(), (TRANSIENT, False), id="slow_down"),
        # The URL is wrong: a configuration error, even on a refresh, whatever the body.
        pytest.param(302, None, False, frozenset(), (MISCONFIGURED, False), id="redirect"),
        pytest.param(308, None, True, HIRO_401, (MISCONFIGURED, False), id="308-refresh"),
        pytest.param(404, None, False, frozenset(), (MISCONFIGURED, False), id="404"),
        pytest.param(
            404, "invalid_grant", True, frozenset(), (MISCONFIGURED, False), id="404-refresh"
        ),
        pytest.param(405, None, True, frozenset(), (MISCONFIGURED, False), id="405"),
        pytest.param(200, None, False, frozenset(), (TRANSIENT, False), id="odd-2xx"),
        # A dead refresh token: fall back to the primary grant.
        pytest.param(
            400, "invalid_grant", True, frozenset(), (REJECTED, True), id="refresh-inv-grant"
        ),
        pytest.param(
            401, "invalid_grant", True, frozenset(), (REJECTED, True), id="refresh-401-ig"
        ),
        pytest.param(401, None, True, HIRO_401, (REJECTED, True), id="hiro-refresh-401"),
        pytest.param(401, "invalid_client", True, HIRO_401, (REJECTED, True), id="hiro-401-any"),
        # Rejected credentials or request.
        pytest.param(400, "invalid_grant", False, frozenset(), (REJECTED, False), id="login-ig"),
        pytest.param(401, None, False, HIRO_401, (REJECTED, False), id="hiro-login-401"),
        pytest.param(401, None, True, frozenset(), (REJECTED, False), id="refresh-401-plain"),
        pytest.param(400, "invalid_client", True, frozenset(), (REJECTED, False), id="inv-client"),
        pytest.param(400, "invalid_scope", False, frozenset(), (REJECTED, False), id="inv-scope"),
        pytest.param(403, None, True, HIRO_401, (REJECTED, False), id="403-refresh"),
        pytest.param(400, "E_FORBIDDEN", False, frozenset(), (REJECTED, False), id="odd-code"),
    ],
)
def test_classify_http_error(
    status: int,
    code: str | None,
    refreshing: bool,
    rejected_statuses: frozenset[int],
    expected: tuple[FailureKind, bool],
) -> None:
    """Status, error code and refreshing decide (kind, refresh_token_rejected)."""
    result = classify_http_error(
        status=status,
        error_code=code,
        refreshing=refreshing,
        refresh_rejected_statuses=rejected_statuses,
    )
    assert result == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(None, (None, None), id="none"),
        pytest.param({}, (None, None), id="empty"),
        pytest.param(
            {"error": "invalid_grant", "error_description": "Invalid refresh token"},
            ("invalid_grant", "Invalid refresh token"),
            id="rfc6749",
        ),
        pytest.param({"error": "invalid_client"}, ("invalid_client", None), id="rfc6749-code-only"),
        pytest.param(
            {"error": "invalid_grant", "status": 400, "summary": "Bad Request", "raw": "bad creds"},
            ("invalid_grant", "bad creds"),
            id="aerion-wrapped",
        ),
        pytest.param(
            {"error": "E_FORBIDDEN", "status": 403, "summary": "Forbidden", "raw": "invalid"},
            ("E_FORBIDDEN", "invalid"),
            id="aerion-api-error",
        ),
        pytest.param(
            {"code": 400, "error": "invalid_grant", "error_description": "User credentials"},
            ("invalid_grant", "User credentials"),
            id="node-oauth2-server-native",
        ),
        pytest.param(
            {"error": {"message": "error message", "code": 401}},
            (None, "error message"),
            id="hiro-object",
        ),
        pytest.param({"error": {"code": 401}}, (None, None), id="hiro-object-no-message"),
        pytest.param({"error": "error message"}, (None, "error message"), id="hiro-string"),
        pytest.param(
            {"error": "Unauthorized", "error_description": ""},
            ("Unauthorized", None),
            id="youtrack-empty-description",
        ),
        pytest.param({"message": "gateway says no"}, (None, "gateway says no"), id="message-only"),
        pytest.param({"error": 42, "raw": "x"}, (None, "x"), id="error-not-string"),
        pytest.param({"error": "x" * 65}, (None, "x" * 65), id="too-long-for-a-code"),
    ],
)
def test_error_fields(data: dict[str, Any] | None, expected: tuple[str | None, str | None]) -> None:
    """(code, description) from RFC 6749, Aerion and HIRO error bodies."""
    assert error_fields(data) == expected


SCRUBBING = OAuth2Protocol(
    token_url="https://idp.test/token",
    grant="password",
    client_id="app",
    client_secret=SecretStr("app-secret"),
    username="alice",
    password=SecretStr("alice-password"),
)

SPACED = OAuth2Protocol(
    token_url="https://idp.test/token",
    grant="password",
    username="alice",
    password=SecretStr("pass word1"),
    client_id="app",
    client_secret=SecretStr("tab\tsecret"),
)
"""Secrets that making text one line would change: redacted before and after."""


@pytest.mark.parametrize(
    ("proto", "text", "expected"),
    [
        pytest.param(SCRUBBING, "plain words", "plain words", id="unchanged"),
        pytest.param(
            SCRUBBING,
            "client app-secret rejected",
            "client [redacted] rejected",
            id="client-secret",
        ),
        pytest.param(
            SCRUBBING,
            "user alice password alice-password, again alice-password",
            # "password" on its own is 8 characters of alice-password: redacted too.
            "user alice [redacted] [redacted], again [redacted]",
            id="password-twice",
        ),
        pytest.param(
            SCRUBBING, "your alice-passw is wrong", "your [redacted] is wrong", id="password-prefix"
        ),
        pytest.param(
            SCRUBBING, "alice-p and app-sec", "alice-p and app-sec", id="7-characters-shown"
        ),
        pytest.param(
            SCRUBBING,
            "YXBwOmFwcC1zZWNyZXQ= / %59XBwOmFwcC1zZWNyZXQ%3D",
            "[redacted] / [redacted]",
            id="basic-credentials",
        ),
        pytest.param(
            SCRUBBING,
            "line\nbreak\x1b[31mred\x1b[0m\u202etxt.exe\x00!",
            "line break red txt.exe !",
            id="one-printable-line",
        ),
        pytest.param(
            SPACED, "pass  word1 tab\tsecret", "[redacted] [redacted]", id="whitespace-in-secrets"
        ),
        pytest.param(
            SCRUBBING,
            "y" * (MAX_ERROR_TEXT - 4) + "alice-password",
            "y" * (MAX_ERROR_TEXT - 4) + "[red...",
            id="redacted-before-truncated",
        ),
        pytest.param(SCRUBBING, "a\n\tb   c \r\n", "a b c", id="whitespace-collapsed"),
        pytest.param(SCRUBBING, "x" * MAX_ERROR_TEXT, "x" * MAX_ERROR_TEXT, id="at-limit"),
        pytest.param(
            SCRUBBING, "x" * (MAX_ERROR_TEXT + 1), "x" * MAX_ERROR_TEXT + "...", id="truncated"
        ),
        pytest.param(
            SCRUBBING,
            "app-secret" + "y" * 300,
            ("[redacted]" + "y" * 300)[:MAX_ERROR_TEXT] + "...",
            id="redacted-then-truncated",
        ),
        pytest.param(
            OAuth2Protocol(token_url="https://idp.test/token", grant="client_credentials"),
            "nothing to hide",
            "nothing to hide",
            id="no-secrets",
        ),
        pytest.param(
            OAuth2Protocol(
                token_url="https://idp.test/token",
                grant="client_credentials",
                client_id="app",
                client_secret=SecretStr(""),
            ),
            "empty secret",
            "empty secret",
            id="empty-secret-ignored",
        ),
        pytest.param(
            HiroAppProtocol(
                auth_base="https://core.test/api/auth/6",
                client_id="cid",
                client_secret=SecretStr("hiro-client-secret"),
                username="u",
                password=SecretStr("hiro-pw"),
            ),
            "hiro-client-secret / hiro-pw",
            "[redacted] / hiro-pw",  # under 8 characters: not redacted
            id="hiro",
        ),
    ],
)
def test_scrub(proto: TokenProtocol, text: str, expected: str) -> None:
    """Secrets are blanked, whitespace collapsed and long text truncated."""
    assert proto.scrub(text) == expected


# --- parsing responses ---------------------------------------------------------------------


def respond(
    status: int, body: object, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, bytes]:
    """A response and its body; dicts and lists are sent as JSON, str and bytes as they are."""
    if isinstance(body, bytes):
        content = body
    elif isinstance(body, str):
        content = body.encode()
    else:
        content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.Response(status, headers=headers, content=content), content


HIRO_DOC_TOKEN = (
    "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE1ODg5MjY5OTcsInN1YiI6ImlkZW50aXR5SWQiLCJkYXRhIjp7"
    "...}.$SIGNATURE"
)
AERION_ACCESS = "59d8cb89af1fc22a141066b8e71337c4abfee434"
AERION_REFRESH = "83ef27458d5e71337afe40b4854264cf72889cac"


@pytest.mark.parametrize(
    ("text", "body", "refreshing", "wall_now", "token", "lifetime", "refresh_token"),
    [
        pytest.param(
            HIRO_APP,
            {
                "_TOKEN": HIRO_DOC_TOKEN,
                "_APPLICATION": "c1234567890abcdefghijklmn_c1234567890abcdefghijklmn",
                "_IDENTITY": "user@company.co",
                "_IDENTITY_ID": "c1234567890abcdefghijklmn_c1234567890abcdefghijklmn",
                "expires-at": 1577711870081,
                "refresh_token": "rt-opaque",
                "type": "Bearer",
            },
            False,
            1577708270.081,
            HIRO_DOC_TOKEN,
            3600.0,
            "rt-opaque",
            id="hiro-app-doc-example",
        ),
        pytest.param(
            HIRO_APP,
            {"_TOKEN": "t", "expires-at": "1800000600000", "refresh_token": "rt-2"},
            True,
            WALL,
            "t",
            600.0,
            "rt-2",
            id="hiro-expires-at-string-ms",
        ),
        pytest.param(
            HIRO_APP,
            {"_TOKEN": make_jwt({"exp": WALL + 100}), "expires-at": (WALL + 3600) * 1000},
            False,
            WALL,
            make_jwt({"exp": WALL + 100}),
            3600.0,
            None,
            id="hiro-expires-at-beats-jwt",
        ),
        pytest.param(
            HIRO_APP,
            {"_TOKEN": "t", "expires-at": (WALL - 5) * 1000},
            False,
            WALL,
            "t",
            -5.0,
            None,
            id="hiro-already-expired",
        ),
        pytest.param(
            HIRO_APP,
            {"_TOKEN": make_jwt({"exp": WALL + 600}), "refresh_token": ""},
            False,
            WALL,
            make_jwt({"exp": WALL + 600}),
            600.0,
            None,
            id="hiro-jwt-exp-empty-refresh-token",
        ),
        pytest.param(
            HIRO_APP,
            {"_TOKEN": "t", "expires_in": "900"},
            False,
            WALL,
            "t",
            900.0,
            None,
            id="hiro-expires-in",
        ),
        pytest.param(
            HIRO_APP,
            {"access_token": "t", "expires-at": True},
            False,
            WALL,
            "t",
            None,
            None,
            id="hiro-access-token-alias-no-lifetime",
        ),
        pytest.param(
            HIRO_TOKEN,
            {
                "access_token": make_jwt({"exp": WALL + 7200}),
                "expires_in": "3600",
                "token_type": "Bearer",
                "refresh_token": "rt-new",
            },
            True,
            WALL,
            make_jwt({"exp": WALL + 7200}),
            3600.0,
            "rt-new",
            id="hiro-token-expires-in-string",
        ),
        pytest.param(
            AERION,
            {
                "token_type": "bearer",
                "access_token": AERION_ACCESS,
                "expires_in": 3600,
                "refresh_token": AERION_REFRESH,
            },
            False,
            WALL,
            AERION_ACCESS,
            3600.0,
            AERION_REFRESH,
            id="aerion-login-lowercase-bearer",
        ),
        pytest.param(
            AERION,
            {
                "token_type": "bearer",
                "access_token": "a" * 40,
                "expires_in": 3600,
                "refresh_token": "b" * 40,
            },
            True,
            WALL,
            "a" * 40,
            3600.0,
            "b" * 40,
            id="aerion-refresh-rotates",
        ),
        pytest.param(
            HUB_PASSWORD,
            {
                "access_token": "1700000000000.0-0-0-0-0.abcDEF123",
                "token_type": "Bearer",
                "expires_in": 3600,
                "scope": "0-0-0-0-0 yt-id",
                "refresh_token": "1700000000000.xyz",
            },
            False,
            WALL,
            "1700000000000.0-0-0-0-0.abcDEF123",
            3600.0,
            "1700000000000.xyz",
            id="hub-password",
        ),
        pytest.param(
            HUB_PASSWORD,
            {"access_token": "hub-2", "token_type": "Bearer", "expires_in": 3600, "scope": "s"},
            True,
            WALL,
            "hub-2",
            3600.0,
            None,
            id="hub-refresh-keeps-no-refresh-token",
        ),
        pytest.param(
            OAUTH2_RT,
            {"access_token": "opaque", "token_type": "Bearer"},
            False,
            WALL,
            "opaque",
            None,
            None,
            id="no-expires-in-opaque",
        ),
        pytest.param(
            OAUTH2_RT,
            {"access_token": make_jwt({"exp": WALL + 300}), "token_type": "Bearer"},
            False,
            WALL,
            make_jwt({"exp": WALL + 300}),
            300.0,
            None,
            id="no-expires-in-jwt-exp",
        ),
        pytest.param(
            OAUTH2_RT,
            {"access_token": make_jwt({"exp": WALL + 300}), "expires_in": None},
            False,
            WALL,
            make_jwt({"exp": WALL + 300}),
            300.0,
            None,
            id="null-expires-in-jwt-exp",
        ),
        pytest.param(
            OAUTH2_RT,
            {"access_token": make_jwt({"exp": WALL + 300}), "expires_in": 60},
            False,
            WALL,
            make_jwt({"exp": WALL + 300}),
            60.0,
            None,
            id="expires-in-beats-jwt",
        ),
        pytest.param(
            OAUTH2_RT,
            {"access_token": "t", "expires_in": 59.5, "scope": ["a", "b"]},
            False,
            WALL,
            "t",
            59.5,
            None,
            id="float-expires-in-list-scope-ignored",
        ),
        pytest.param(
            OAUTH2_RT,
            {"access_token": "t", "expires_in": 60, "error": "ignored"},
            False,
            WALL,
            "t",
            60.0,
            None,
            id="access-token-wins-over-stray-error",
        ),
    ],
)
def test_parse_success(
    text: str,
    body: dict[str, Any],
    refreshing: bool,
    wall_now: float,
    token: str,
    lifetime: float | None,
    refresh_token: str | None,
) -> None:
    """A token response becomes a Grant: token, lifetime from now, refresh token."""
    response, content = respond(200, body)
    grant = protocol(text).parse_response(
        response, content, wall_now=wall_now, refreshing=refreshing
    )
    assert grant.access_token == token
    assert grant.refresh_token == refresh_token
    if lifetime is None:
        assert grant.lifetime is None
    else:
        assert grant.lifetime == pytest.approx(lifetime, abs=1e-3)


GRAPH_CONN_401 = {
    "error": {
        "code": 400,
        "message": 'Bad Request : {"error_description":"Authentication failed for u",'
        '"error":"invalid_grant"}',
    }
}
HTML = "<html><body><h1>502 Bad Gateway</h1></body></html>"
TEXT_HEADERS = {"Content-Type": "text/html"}


@pytest.mark.parametrize(
    ("text", "status", "body", "headers", "refreshing", "expected"),
    [
        # HIRO /app + /refresh: 401 on refresh means the refresh token is dead.
        pytest.param(
            HIRO_APP,
            401,
            {"error": {"message": "refresh token expired", "code": 401}},
            {},
            True,
            ("http_401", REJECTED, True, 401, None),
            id="hiro-refresh-401",
        ),
        pytest.param(
            HIRO_APP,
            401,
            {"error": {"message": "Authentication failed", "code": 401}},
            {},
            False,
            ("http_401", REJECTED, False, 401, None),
            id="hiro-app-401-not-refresh-rejected",
        ),
        pytest.param(
            HIRO_APP,
            401,
            GRAPH_CONN_401,
            {},
            False,
            ("http_401", REJECTED, False, 401, None),
            id="hiro-app-401-legacy-inner-400",
        ),
        pytest.param(
            HIRO_APP,
            200,
            {"error": {"message": "invalid refresh token", "code": 401}},
            {},
            True,
            ("http_401", REJECTED, True, 401, None),
            id="hiro-200-error-object-on-refresh",
        ),
        pytest.param(
            HIRO_APP,
            200,
            {"error": "Authentication failed"},
            {},
            False,
            ("http_401", REJECTED, False, 401, None),
            id="hiro-200-error-string-on-login",
        ),
        pytest.param(
            HIRO_APP,
            200,
            {"error": {"message": "maintenance", "code": 503}},
            {"Retry-After": "60"},
            True,
            ("http_503", TRANSIENT, False, 503, 60.0),
            id="hiro-200-error-inner-503",
        ),
        pytest.param(
            HIRO_APP,
            503,
            "Service Unavailable",
            {"Content-Type": "text/plain", "Retry-After": "120"},
            True,
            ("http_503", TRANSIENT, False, 503, 120.0),
            id="hiro-503-text-retry-after",
        ),
        pytest.param(
            HIRO_APP,
            200,
            HTML,
            TEXT_HEADERS,
            False,
            ("invalid_response", TRANSIENT, False, 200, None),
            id="hiro-200-html",
        ),
        pytest.param(
            HIRO_APP,
            200,
            {"_IDENTITY": "user@company.co"},
            {},
            False,
            ("invalid_response", TRANSIENT, False, 200, None),
            id="hiro-200-without-token",
        ),
        pytest.param(
            HIRO_APP,
            200,
            {"_TOKEN": "  "},
            {},
            False,
            ("invalid_response", TRANSIENT, False, 200, None),
            id="hiro-200-blank-token",
        ),
        pytest.param(
            HIRO_APP,
            200,
            [{"_TOKEN": "t"}],
            {},
            False,
            ("invalid_response", TRANSIENT, False, 200, None),
            id="hiro-200-json-list",
        ),
        pytest.param(
            HIRO_APP,
            200,
            {"_TOKEN": "t", "expires_in": "soon"},
            {},
            False,
            ("invalid_response", TRANSIENT, False, 200, None),
            id="hiro-garbage-expires-in",
        ),
        # HIRO /token: plain OAuth2, but 401 on refresh still means a dead refresh token.
        pytest.param(
            HIRO_TOKEN,
            401,
            {"error": {"message": "unauthorized", "code": 401}},
            {},
            True,
            ("http_401", REJECTED, True, 401, None),
            id="hiro-token-refresh-401",
        ),
        pytest.param(
            HIRO_TOKEN,
            401,
            {"error": "invalid_client"},
            {},
            False,
            ("invalid_client", REJECTED, False, 401, None),
            id="hiro-token-login-401",
        ),
        # Aerion: wrapped errors, 503 rate limit.
        pytest.param(
            AERION,
            400,
            {"error": "invalid_grant", "status": 400, "summary": "Bad Request", "raw": "x"},
            {},
            True,
            ("invalid_grant", REJECTED, True, 400, None),
            id="aerion-refresh-invalid-grant",
        ),
        pytest.param(
            AERION,
            400,
            {"error": "invalid_grant", "status": 400, "summary": "Bad Request", "raw": "x"},
            {},
            False,
            ("invalid_grant", REJECTED, False, 400, None),
            id="aerion-login-invalid-grant",
        ),
        pytest.param(
            AERION,
            503,
            b"",
            {"Retry-After": "15"},
            False,
            ("http_503", TRANSIENT, False, 503, 15.0),
            id="aerion-rate-limited",
        ),
        # Hub: RFC 6749 errors; a 401 on refresh is about the client, not the token.
        pytest.param(
            HUB_PASSWORD,
            400,
            {
                "error": "invalid_grant",
                "error_description": "The owner of the refresh token is banned",
            },
            {},
            True,
            ("invalid_grant", REJECTED, True, 400, None),
            id="hub-refresh-invalid-grant",
        ),
        pytest.param(
            HUB_PASSWORD,
            401,
            {"error": "invalid_client"},
            {"WWW-Authenticate": 'Basic realm="Hub"'},
            True,
            ("invalid_client", REJECTED, False, 401, None),
            id="hub-refresh-invalid-client",
        ),
        pytest.param(
            HUB_CLIENT,
            400,
            {"error": "invalid_scope"},
            {},
            False,
            ("invalid_scope", REJECTED, False, 400, None),
            id="hub-invalid-scope",
        ),
        # Generic OAuth2.
        pytest.param(
            OAUTH2_RT,
            429,
            {"error": "slow_down"},
            {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
            False,
            ("slow_down", TRANSIENT, False, 429, 30.0),
            id="429-http-date",
        ),
        pytest.param(
            OAUTH2_RT,
            500,
            HTML,
            TEXT_HEADERS,
            True,
            ("http_500", TRANSIENT, False, 500, None),
            id="500-html",
        ),
        pytest.param(
            OAUTH2_RT,
            400,
            {"error": "temporarily_unavailable"},
            {},
            True,
            ("temporarily_unavailable", TRANSIENT, False, 400, None),
            id="400-temporarily-unavailable",
        ),
        pytest.param(
            OAUTH2_RT,
            302,
            b"",
            {"Location": "https://idp.test/login"},
            False,
            ("unexpected_redirect", MISCONFIGURED, False, 302, None),
            id="302-redirect",
        ),
        pytest.param(
            OAUTH2_RT,
            200,
            HTML,
            TEXT_HEADERS,
            False,
            ("invalid_response", TRANSIENT, False, 200, None),
            id="200-html",
        ),
        pytest.param(
            OAUTH2_RT,
            200,
            b"",
            {},
            True,
            ("invalid_response", TRANSIENT, False, 200, None),
            id="200-empty",
        ),
        pytest.param(
            OAUTH2_RT,
            200,
            {"token_type": "Bearer", "expires_in": 3600},
            {},
            False,
            ("invalid_response", TRANSIENT, False, 200, None),
            id="200-without-access-token",
        ),
        pytest.param(
            OAUTH2_RT,
            200,
            {"access_token": None},
            {},
            False,
            ("invalid_response", TRANSIENT, False, 200, None),
            id="200-null-access-token",
        ),
        pytest.param(
            OAUTH2_RT,
            200,
            {"access_token": "t", "expires_in": [3600]},
            {},
            False,
            ("invalid_response", TRANSIENT, False, 200, None),
            id="200-garbage-expires-in",
        ),
        pytest.param(
            OAUTH2_RT,
            200,
            {"error": "invalid_grant", "error_description": "Invalid refresh token"},
            {},
            True,
            ("invalid_grant", REJECTED, True, 400, None),
            id="200-error-on-refresh",
        ),
        pytest.param(
            OAUTH2_RT,
            200,
            {"error": "invalid_grant"},
            {},
            False,
            ("invalid_grant", REJECTED, False, 400, None),
            id="200-error-on-login",
        ),
    ],
)
def test_parse_error(
    text: str,
    status: int,
    body: object,
    headers: dict[str, str],
    refreshing: bool,
    expected: tuple[str, FailureKind, bool, int, float | None],
) -> None:
    """A failed response raises TokenEndpointError with code, kind, status and retry_after."""
    response, content = respond(status, body, headers)
    with pytest.raises(TokenEndpointError) as info:
        protocol(text).parse_response(
            response, content, wall_now=HTTP_DATE_WALL - 30, refreshing=refreshing
        )
    error = info.value
    assert (
        error.code,
        error.kind,
        error.refresh_token_rejected,
        error.status,
        error.retry_after,
    ) == expected


@pytest.mark.parametrize(
    ("text", "status", "body", "refreshing", "message"),
    [
        pytest.param(
            AERION,
            400,
            {"error": "invalid_grant", "status": 400, "summary": "Bad Request", "raw": "Invalid"},
            True,
            "refresh failed: token endpoint answered HTTP 400 invalid_grant: Invalid",
            id="aerion-wrapped",
        ),
        pytest.param(
            HIRO_APP,
            401,
            {"error": {"message": "refresh token expired", "code": 401}},
            True,
            "refresh failed: token endpoint answered HTTP 401 http_401: refresh token expired",
            id="hiro-object",
        ),
        pytest.param(
            OAUTH2_RT,
            500,
            HTML,
            False,
            "login failed: token endpoint answered HTTP 500 http_500 (body is not JSON)",
            id="html",
        ),
        pytest.param(
            OAUTH2_RT,
            502,
            b"",
            False,
            "login failed: token endpoint answered HTTP 502 http_502",
            id="empty",
        ),
        pytest.param(
            OAUTH2_RT,
            200,
            HTML,
            False,
            "token endpoint answered HTTP 200 with a body that is not a JSON object",
            id="200-html",
        ),
        pytest.param(
            OAUTH2_RT,
            200,
            b"  ",
            False,
            "token endpoint answered HTTP 200 with an empty body",
            id="200-blank",
        ),
        pytest.param(
            OAUTH2_RT,
            200,
            {"token_type": "Bearer"},
            False,
            "token endpoint answered HTTP 200 without an access_token",
            id="200-no-access-token",
        ),
        pytest.param(
            HIRO_APP,
            200,
            {"token_type": "Bearer"},
            False,
            "HIRO answered HTTP 200 without a _TOKEN",
            id="hiro-200-no-token",
        ),
    ],
)
def test_error_message(
    text: str, status: int, body: object, refreshing: bool, message: str
) -> None:
    """The error message says what was tried, the status, the code and a short description."""
    response, content = respond(status, body)
    with pytest.raises(TokenEndpointError) as info:
        protocol(text).parse_response(response, content, wall_now=WALL, refreshing=refreshing)
    assert str(info.value) == message


def test_error_message_scrubs_echoed_secrets() -> None:
    """An identity provider that echoes our secrets does not get them into the message."""
    description = "client app-secret with password alice-password is wrong" + " !" * 200
    response, content = respond(401, {"error": "invalid_client", "error_description": description})
    with pytest.raises(TokenEndpointError) as info:
        protocol(OAUTH2_RT).parse_response(response, content, wall_now=WALL, refreshing=False)
    message = str(info.value)
    assert "app-secret" not in message
    assert "alice-password" not in message
    assert message.startswith(  # "password" is 8 characters of alice-password
        "login failed: token endpoint answered HTTP 401 invalid_client:"
        " client [redacted] with [redacted] [redacted] is wrong ! !"
    )
    assert message.endswith("...")


# --- what a request carried is redacted from what answers it ------------------------------

ROTATED_RT = "rt-4a9c1e77-live-refresh-token"


def answered(request: httpx.Request, status: int, body: object) -> tuple[httpx.Response, bytes]:
    """A JSON answer to *request*, as the client hands it over (``response.request`` set)."""
    content = json.dumps(body).encode()
    response = httpx.Response(
        status, headers={"Content-Type": "application/json"}, content=content, request=request
    )
    return response, content


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param(
            httpx.Request("POST", "https://idp.test/t", data={"refresh_token": "rt-1", "a": "b"}),
            ["rt-1"],
            id="form",
        ),
        pytest.param(
            httpx.Request(
                "POST",
                "https://idp.test/t",
                headers={"Authorization": "Basic YXBwOnNlY3JldA=="},
                data={"password": "pw 1", "client_secret": "cs"},
            ),
            ["YXBwOnNlY3JldA==", "cs", "pw 1"],
            id="basic-and-form",
        ),
        pytest.param(
            httpx.Request(
                "POST", "https://idp.test/t", json={"client_secret": "cs", "refresh_token": "rt"}
            ),
            ["cs", "rt"],
            id="json",
        ),
        pytest.param(
            httpx.Request("POST", "https://idp.test/t", json=["refresh_token"]), [], id="json-list"
        ),
        pytest.param(
            httpx.Request("POST", "https://idp.test/t", headers={"Authorization": "Bearer at-9"}),
            ["at-9"],
            id="bearer",
        ),
        pytest.param(None, [], id="no-request"),
    ],
)
def test_secrets_sent(request_: httpx.Request | None, expected: list[str]) -> None:
    """The Authorization credentials and the secret fields of a form or JSON body."""
    assert sorted(secrets_sent(request_)) == sorted(expected)


@pytest.mark.parametrize(
    ("text", "refresh_request"),
    [
        pytest.param(OAUTH2_RT, True, id="oauth2-refresh"),
        pytest.param(HIRO_APP, True, id="hiro-refresh"),
        pytest.param(OAUTH2_BASIC, False, id="oauth2-basic-login"),
        pytest.param(HIRO_APP, False, id="hiro-login"),
    ],
)
def test_an_echoed_request_leaves_nothing_in_the_error(text: str, refresh_request: bool) -> None:
    """An identity provider that quotes the request (headers and body) in its error: the
    message keeps the words around, and not one piece of 8 of anything secret it carried."""
    proto = protocol(text)
    sent = proto.refresh_request(ROTATED_RT) if refresh_request else proto.login_request()
    echo = f"bad request: {sent.headers.get('authorization')} {sent.content.decode()}"
    response, content = answered(sent, 400, {"error": "invalid_request", "error_description": echo})
    with pytest.raises(TokenEndpointError) as info:
        proto.parse_response(response, content, wall_now=WALL, refreshing=refresh_request)
    message = info.value.message
    assert "bad request: " in message
    secrets = [*secrets_sent(sent), *proto.secret_values()]
    assert (ROTATED_RT in secrets) is refresh_request
    pieces = {s[i : i + 8] for s in secrets if len(s) >= 8 for i in range(len(s) - 7)}
    assert [piece for piece in pieces if piece in message] == []


def test_an_error_code_that_is_a_secret_is_not_kept() -> None:
    """A token-shaped "error" echoing the refresh token would become a metric label: the
    stable code falls back to the status, and the message does not quote it."""
    proto = protocol(OAUTH2_RT)
    sent = proto.refresh_request(ROTATED_RT)
    response, content = answered(sent, 400, {"error": ROTATED_RT})
    with pytest.raises(TokenEndpointError) as info:
        proto.parse_response(response, content, wall_now=WALL, refreshing=True)
    assert info.value.code == "http_400"
    assert ROTATED_RT not in info.value.message
    assert not info.value.refresh_token_rejected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            OAUTH2_BASIC,
            {"p@ss:w/rd", *basic_credentials("my app", "p@ss:w/rd")},
            id="basic-both-spellings",
        ),
        pytest.param(OAUTH2_POST, {"app-secret", "alice-password"}, id="post-no-combination"),
        pytest.param(HIRO_APP, {"csecret", "12345678"}, id="hiro"),
    ],
)
def test_secret_values(text: str, expected: set[str]) -> None:
    """The secrets a protocol sends; the client id only inside its Basic credentials."""
    values = set(protocol(text).secret_values())
    assert values == expected
    assert "my app" not in values


def test_basic_credentials_are_what_is_sent() -> None:
    encoded, verbatim = basic_credentials("my app", "p@ss:w/rd")
    assert basic_auth("my app", "p@ss:w/rd") == f"Basic {encoded}"
    assert base64.b64decode(encoded) == b"my+app:p%40ss%3Aw%2Frd"
    assert base64.b64decode(verbatim) == b"my app:p@ss:w/rd"
