"""Helpers for the login-flow tests: PKCE pairs, the login form, redirects, ID tokens."""

from __future__ import annotations

import re
import secrets
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet, KeySetSerialization
from joserfc.jwt import JWTClaimsRegistry

from broker.fakes.pkce import s256

CALLBACK = "http://127.0.0.1:8765/callback"


def pkce() -> tuple[str, str]:
    """A fresh (verifier, S256 challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    return verifier, s256(verifier)


def single(values: dict[str, list[str]]) -> dict[str, str]:
    """``parse_qs`` output with one value per name (asserting there is only one)."""
    assert all(len(v) == 1 for v in values.values()), values
    return {k: v[0] for k, v in values.items()}


def query_of(location: str) -> dict[str, str]:
    """The query parameters of a redirect's ``Location``."""
    return single(parse_qs(urlsplit(location).query, keep_blank_values=True))


def fragment_of(location: str) -> dict[str, str]:
    """The fragment parameters of a redirect's ``Location``."""
    return single(parse_qs(urlsplit(location).fragment, keep_blank_values=True))


def without_query(location: str) -> str:
    parts = urlsplit(location)
    return parts._replace(query="", fragment="").geturl()


def hidden_fields(page: str) -> dict[str, str]:
    """The hidden inputs of a login form, as a browser would post them back."""
    found = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    return {name: value for name, value in found}


def assert_form_page(response: httpx.Response, *ids: str) -> None:
    """An HTML page without anything to load, whose inputs have labels and the given ids."""
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert (
        response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    )
    page = response.text
    for element in ids:
        assert f'id="{element}"' in page, element
    for field in ("username", "password", "user_code"):
        if f'id="{field}"' in page:
            assert f'<label for="{field}">' in page
            assert f'name="{field}"' in page
    # Nothing to load: no scripts, styles, images or links to anywhere.
    assert not re.search(r"<script|<link|<img|<iframe|<style|\ssrc=|\shref=", page)


def log_in(
    client: httpx.Client,
    path: str,
    params: dict[str, str],
    *,
    username: str,
    password: str,
    action: str = "allow",
) -> httpx.Response:
    """GET the login form at ``path``, then post it back as a person would."""
    page = client.get(path, params=params)
    assert page.status_code == 200, page.text
    form = {**hidden_fields(page.text), "username": username, "password": password}
    return client.post(path, data={**form, "action": action})


def verify_id_token(
    token: str, jwks: dict[str, Any], *, issuer: str, audience: str, now: float, **claims: Any
) -> dict[str, Any]:
    """Verify an ID token's RS256 signature against ``jwks`` and its claims; return them."""
    keys = KeySet.import_key_set(cast(KeySetSerialization, jwks))
    decoded = jwt.decode(token, keys, algorithms=["RS256"])
    assert decoded.header["alg"] == "RS256"
    assert decoded.header["kid"] == jwks["keys"][0]["kid"]
    options: dict[str, Any] = {name: {"essential": True} for name in ("exp", "iat", "sub")}
    options |= {"iss": {"essential": True, "value": issuer}}
    options |= {"aud": {"essential": True, "value": audience}}
    options |= {name: {"essential": True, "value": value} for name, value in claims.items()}
    registry = JWTClaimsRegistry(now=int(now), **options)
    registry.validate(decoded.claims)
    return dict(decoded.claims)
