"""The browser half of the authorization code flow: the authorization request's URL with
PKCE (RFC 6749 §4.1.1, RFC 7636), and reading the identity provider's redirect back
(§4.1.2). Pure: no I/O; the code exchange is :meth:`OAuth2Protocol.code_request`.

PKCE is always S256 (RFC 9700 §2.1.1: ``plain`` only where S256 cannot be used), the
``state`` is random per login and checked by the broker, and an OpenID Connect ``nonce``
is sent when ``openid`` is in the scope, so the ``id_token`` can be tied to this login.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

VERIFIER_BYTES = 48
"""64 characters of base64url: within RFC 7636's 43 to 128, 384 bits of randomness."""


def s256_challenge(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL(SHA256(ASCII(verifier))), unpadded."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class LoginSecrets:
    """What one login attempt keeps to itself until the callback: never logged."""

    state: str = field(repr=False)
    verifier: str = field(repr=False)
    nonce: str | None = field(repr=False)

    @classmethod
    def new(cls, *, with_nonce: bool) -> LoginSecrets:
        return cls(
            state=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(VERIFIER_BYTES),
            nonce=secrets.token_urlsafe(24) if with_nonce else None,
        )


@dataclass(frozen=True, kw_only=True)
class AuthorizationEndpoint:
    """One provider's authorization endpoint and what its requests carry."""

    url: str
    client_id: str
    scope: str | None = None
    prompt: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    """More query parameters (``access_type=offline`` for Hub's refresh token, ...)."""
    style: Literal["code", "hiro_ui"] = "code"
    """``code``: RFC 6749 §4.1 with PKCE. ``hiro_ui``: HIRO's UI flow, ``client_id`` and
    ``redirect_url`` only; the token comes back in the fragment as ``accessoken`` (the
    seed's spelling), with no state: the login is bound by the browser's cookie alone."""

    @property
    def wants_id_token(self) -> bool:
        return "openid" in (self.scope or "").split()

    def request_url(self, login: LoginSecrets, redirect_uri: str) -> str:
        """The URL the browser opens: *url* with the request's parameters added to any
        query it already has."""
        query: dict[str, str] = dict(self.params)
        if self.style == "hiro_ui":
            query.update({"client_id": self.client_id, "redirect_url": redirect_uri})
            return self._with_query(query)
        query.update(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "state": login.state,
                "code_challenge": s256_challenge(login.verifier),
                "code_challenge_method": "S256",
            }
        )
        if self.scope:
            query["scope"] = self.scope
        if self.prompt:
            query["prompt"] = self.prompt
        if login.nonce is not None:
            query["nonce"] = login.nonce
        return self._with_query(query)

    def _with_query(self, query: dict[str, str]) -> str:
        parts = urlsplit(self.url)
        existing = parse_qsl(parts.query, keep_blank_values=True)
        merged = [*((k, v) for k, v in existing if k not in query), *query.items()]
        return urlunsplit(parts._replace(query=urlencode(merged)))


@dataclass(frozen=True)
class Redirect:
    """The identity provider's answer, as the redirect back to the broker carries it."""

    state: str | None = field(repr=False)
    code: str | None = field(repr=False)
    error: str | None = None
    error_description: str | None = None


def read_redirect(query: Mapping[str, str]) -> Redirect:
    """The parameters of a redirect to ``/login/callback`` (its query, or a pasted URL's)."""
    return Redirect(
        state=query.get("state") or None,
        code=query.get("code") or None,
        error=query.get("error") or None,
        error_description=query.get("error_description") or None,
    )


def redirect_of_url(url: str) -> Redirect:
    """The parameters of a redirect URL pasted back by a person (``--no-browser``)."""
    return read_redirect(dict(parse_qsl(urlsplit(url.strip()).query, keep_blank_values=True)))
