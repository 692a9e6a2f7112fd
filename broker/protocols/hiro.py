"""HIRO (arago) Auth API v6 password flow: JSON login on ``/app``, JSON ``/refresh``.

The OAuth2-style ``/token`` endpoint of auth API 6.6 is plain RFC 6749 and is
built from :class:`~broker.protocols.oauth2.OAuth2Protocol` in
:mod:`broker.protocols.presets`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from pydantic import SecretStr

from broker.core.errors import FailureCode, FailureKind, TokenEndpointError
from broker.core.tokens import Grant
from broker.protocols.base import (
    TokenProtocol,
    jwt_expiry,
    parse_json_object,
    parse_lifetime,
    request_of,
    token_endpoint_error,
)

# What arago's own Python client sends; some HIRO gateways answer text/plain errors.
HEADERS = {"Accept": "text/plain, application/json", "Content-Type": "application/json"}

# HIRO answers a dead refresh token with HTTP 401 (arago's client falls back to /app on it).
REFRESH_REJECTED = frozenset({401})


@dataclass(frozen=True, kw_only=True)
class HiroAppProtocol(TokenProtocol):
    """``POST <auth_base>/app`` to log in, ``POST <auth_base>/refresh`` to refresh."""

    auth_base: str
    client_id: str
    client_secret: SecretStr
    username: str | None = None
    password: SecretStr | None = None

    @property
    def can_login(self) -> bool:
        return self.username is not None and self.password is not None

    def login_request(self) -> httpx.Request:
        if self.username is None or self.password is None:
            msg = "HIRO /app login without username and password"  # config prevents this
            raise ValueError(msg)
        body = {
            "client_id": self.client_id,
            "client_secret": self.client_secret.get_secret_value(),
            "username": self.username,
            "password": self.password.get_secret_value(),
        }
        return httpx.Request("POST", f"{self.auth_base}/app", headers=HEADERS, json=body)

    def refresh_request(self, refresh_token: str) -> httpx.Request:
        body = {
            "client_id": self.client_id,
            "client_secret": self.client_secret.get_secret_value(),
            "refresh_token": refresh_token,
        }
        return httpx.Request("POST", f"{self.auth_base}/refresh", headers=HEADERS, json=body)

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
                refresh_rejected_statuses=REFRESH_REJECTED,
            )
        data = parse_json_object(body, status)
        if data.get("error"):
            # arago's client reads errors from 200 bodies too: {"error": {"code": 401, ...}}.
            error = data["error"]
            inner = error.get("code") if isinstance(error, dict) else None
            as_status = inner if isinstance(inner, int) and 400 <= inner < 600 else 401
            raise token_endpoint_error(
                self,
                as_status,
                response.headers,
                body,
                wall_now=wall_now,
                refreshing=refreshing,
                sent=request_of(response),
                refresh_rejected_statuses=REFRESH_REJECTED,
            )
        token = data.get("_TOKEN") or data.get("access_token")
        if not isinstance(token, str) or not token.strip():
            msg = f"HIRO answered HTTP {status} without a _TOKEN"
            raise TokenEndpointError(
                msg, code=FailureCode.INVALID_RESPONSE, kind=FailureKind.TRANSIENT, status=status
            )
        lifetime = _lifetime(data, token, wall_now)
        refresh_token = data.get("refresh_token")
        return Grant(
            access_token=token,
            lifetime=lifetime,
            refresh_token=refresh_token
            if isinstance(refresh_token, str) and refresh_token
            else None,
        )

    def describe(self) -> str:
        how = f"password login as {self.username}" if self.can_login else "seeded refresh token"
        return f"hiro: {how} at POST {self.auth_base}/app, refresh at POST {self.auth_base}/refresh"

    def secret_values(self) -> Iterable[str]:
        yield self.client_secret.get_secret_value()
        if self.password is not None:
            yield self.password.get_secret_value()


def _lifetime(data: dict[str, object], token: str, wall_now: float) -> float | None:
    """Seconds left: from ``expires-at`` (ms since epoch), else ``expires_in``, else the JWT."""
    expires_at_ms = data.get("expires-at")
    if isinstance(expires_at_ms, str) and expires_at_ms.isdigit():
        expires_at_ms = int(expires_at_ms)
    if isinstance(expires_at_ms, int | float) and not isinstance(expires_at_ms, bool):
        return float(expires_at_ms) / 1000.0 - wall_now
    lifetime = parse_lifetime(data.get("expires_in"))
    if lifetime is not None:
        return lifetime
    exp = jwt_expiry(token)
    return exp - wall_now if exp is not None else None
