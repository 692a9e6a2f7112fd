"""RFC 6749 token requests: form-encoded grants on one token endpoint.

Aerion, JetBrains Hub and HIRO's ``/token`` endpoint are this protocol with
particular settings (see :mod:`broker.protocols.presets`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr

from broker.core.errors import FailureCode, FailureKind, TokenEndpointError
from broker.core.tokens import Grant
from broker.protocols.base import (
    TokenProtocol,
    basic_auth,
    basic_credentials,
    jwt_expiry,
    parse_json_object,
    parse_lifetime,
    request_of,
    token_endpoint_error,
)
from broker.protocols.device import DEVICE_CODE_GRANT

FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, kw_only=True)
class OAuth2Protocol(TokenProtocol):
    """An RFC 6749 client for one token endpoint.

    *grant* is the primary grant (``password`` or ``client_credentials``), or
    ``refresh_token`` for a provider that lives on a seeded refresh token.
    """

    token_url: str
    grant: str
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_auth: str = "client_secret_basic"
    username: str | None = None
    password: SecretStr | None = None
    scope: str | None = None
    #: Sent with the primary grant only (Hub's access_type=offline).
    login_params: Mapping[str, str] = field(default_factory=dict)
    #: Sent with every token request.
    extra_params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    send_scope_on_refresh: bool = True
    #: Statuses that, on a refresh, mean the refresh token is dead (besides invalid_grant).
    refresh_rejected_statuses: frozenset[int] = frozenset()
    label: str = "oauth2"

    @property
    def can_login(self) -> bool:
        # An authorization code comes from a person in a browser (broker login), never
        # unattended: such a provider lives on its refresh token between logins.
        return self.grant not in ("refresh_token", "authorization_code")

    def code_request(self, code: str, verifier: str, redirect_uri: str) -> httpx.Request:
        """Exchange an authorization code (RFC 6749 §4.1.3) with its PKCE verifier
        (RFC 7636 §4.5); a public client sends its ``client_id`` in the body."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        return self._request(form)

    def login_request(self) -> httpx.Request:
        form: dict[str, str] = {"grant_type": self.grant}
        if self.grant == "password":
            if self.username is None or self.password is None:
                msg = "password grant without username and password"  # config prevents this
                raise ValueError(msg)
            form["username"] = self.username
            form["password"] = self.password.get_secret_value()
        if self.scope:
            form["scope"] = self.scope
        form.update(self.login_params)
        return self._request(form)

    def device_authorization_request(self, url: str) -> httpx.Request:
        """RFC 8628 §3.1, at *url*: the client (authenticated as at the token endpoint) and
        its scope."""
        form: dict[str, str] = {}
        if self.scope:
            form["scope"] = self.scope
        return self._request(form, url=url)

    def device_token_request(self, device_code: str) -> httpx.Request:
        """RFC 8628 §3.4: one poll of the token endpoint with the device code."""
        return self._request({"grant_type": DEVICE_CODE_GRANT, "device_code": device_code})

    def refresh_request(self, refresh_token: str) -> httpx.Request:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if self.scope and self.send_scope_on_refresh:
            form["scope"] = self.scope
        return self._request(form)

    def _request(self, form: dict[str, str], *, url: str | None = None) -> httpx.Request:
        headers = {"Accept": "application/json", "Content-Type": FORM, **self.headers}
        for key, value in self.extra_params.items():
            form.setdefault(key, value)
        if self.client_id is not None:
            secret = self.client_secret.get_secret_value() if self.client_secret else ""
            if self._sends_basic and self.client_secret is not None:
                headers["Authorization"] = basic_auth(self.client_id, secret)
            else:
                form["client_id"] = self.client_id
                if self.client_secret is not None:
                    form["client_secret"] = secret
        return httpx.Request("POST", url or self.token_url, headers=headers, data=form)

    def parse_response(
        self, response: httpx.Response, body: bytes, *, wall_now: float, refreshing: bool
    ) -> Grant:
        status = response.status_code
        if not 200 <= status < 300:
            raise token_endpoint_error(
                self,
                status,
                response.headers,
                body,
                wall_now=wall_now,
                refreshing=refreshing,
                sent=request_of(response),
                refresh_rejected_statuses=self.refresh_rejected_statuses,
            )
        data = parse_json_object(body, status)
        if "error" in data and "access_token" not in data:
            # Some servers report errors with a 200; treat it like the 400 it should be.
            raise token_endpoint_error(
                self,
                400,
                response.headers,
                body,
                wall_now=wall_now,
                refreshing=refreshing,
                sent=request_of(response),
            )
        access_token = data.get("access_token")
        if not isinstance(access_token, str) or not access_token.strip():
            msg = f"token endpoint answered HTTP {status} without an access_token"
            raise TokenEndpointError(
                msg, code=FailureCode.INVALID_RESPONSE, kind=FailureKind.TRANSIENT, status=200
            )
        lifetime = parse_lifetime(data.get("expires_in"))
        if lifetime is None:
            exp = jwt_expiry(access_token)
            lifetime = exp - wall_now if exp is not None else None
        refresh_token = data.get("refresh_token")
        id_token = data.get("id_token")
        return Grant(
            access_token=access_token,
            lifetime=lifetime,
            refresh_token=refresh_token
            if isinstance(refresh_token, str) and refresh_token
            else None,
            id_token=id_token if isinstance(id_token, str) and id_token else None,
        )

    def describe(self) -> str:
        how = {
            "password": f"password grant as {self.username}",
            "client_credentials": "client_credentials grant",
            "refresh_token": "refresh_token grant from a seeded refresh token",
            "authorization_code": "a person's browser login (broker login), then refresh_token",
        }[self.grant]
        auth = self.client_auth if self.client_id is not None else "no client authentication"
        scope = f", scope {self.scope!r}" if self.scope else ""
        return f"{self.label}: {how} at POST {self.token_url} ({auth}{scope})"

    def secret_values(self) -> Iterable[str]:
        for secret in (self.client_secret, self.password):
            if secret is not None:
                yield secret.get_secret_value()
        if self._sends_basic and self.client_id is not None and self.client_secret is not None:
            yield from basic_credentials(self.client_id, self.client_secret.get_secret_value())

    @property
    def _sends_basic(self) -> bool:
        return self.client_auth == "client_secret_basic"
