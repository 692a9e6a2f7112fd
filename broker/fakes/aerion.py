"""Fake Aerion API (formerly CoffeeCup), protocol doc §2 and checklist §5.2.

The real server evidently runs node-oauth2-server 2.x, so this fake copies that library's
order of checks, error texts and token format (40 hex characters), behind Aerion's tenant
selection:

- ``POST /oauth2/token``  form-encoded ``password`` and ``refresh_token`` grants; the tenant
  comes from a ``companyurl`` / ``Origin`` / ``Referer`` / ``Referrer`` header, else the
  ``<company>.`` host prefix, else (refresh only) the refresh token itself.
- ``GET /v1/users/me``   Bearer-protected ``{"user": {...}}``.

There is no revoke endpoint, as on the real service.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Unpack
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from broker.fakes.base import FakeProvider, form_grant
from broker.fakes.quirks import QuirkOptions, WorldQuirks
from broker.fakes.recording import RecordedRequest
from broker.fakes.tokens import AccessGrant, TokenState
from broker.fakes.wire import json_response, parse_basic

DEMO_TENANT = "acme"
DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password"
DEMO_CLIENT_ID = "broker-demo"
DEMO_CLIENT_SECRET = "public"

# node-oauth2-server 2.x's default client_id pattern.
CLIENT_ID_PATTERN = re.compile(r"^[a-z0-9-_]{3,40}$", re.IGNORECASE)
# Header names Aerion reads the tenant from, most specific first.
TENANT_HEADERS = ("companyurl", "origin", "referer", "referrer")
# node-oauth2-server's default refresh-token lifetime: 14 days.
DEFAULT_REFRESH_TOKEN_TTL = 1_209_600.0

_SUMMARY = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
# Express answers res.json() with this exact content type.
_CONTENT_TYPE = "application/json; charset=utf-8"


def company_of(value: str) -> str | None:
    """The company in a tenant header: ``https://acme.aerion.app`` → ``acme``."""
    parsed = urlsplit(value if "//" in value else f"//{value}")
    host = (parsed.hostname or "").lower()
    return host.split(".", 1)[0] or None


class FakeAerion(FakeProvider):
    """A fake Aerion token server and ``/v1/users/me``.

    Args:
        tenants: company name → {email: password}.
        ttl: access-token lifetime in seconds (``expires_in`` is its integer part).
        refresh_token_ttl: refresh-token lifetime; ``None`` = never expires.
        revoke_old_refresh_token: a refresh always rotates; this also kills the old token.
        wrapped_errors: token errors as ``{error, status, summary, raw}`` (Aerion app layer)
            instead of node-oauth2-server's native ``{code, error, error_description}``.
        validate_client_id: reject client ids outside ``^[a-z0-9-_]{3,40}$``.
        unauthorized_status: status of ``/v1/users/me`` for a bad token (401, or 403 as in
            the legacy CoffeeCup docs).
        now: the fake's clock, epoch seconds.
        quirks, **switches: the :class:`~broker.fakes.base.WorldQuirks`.
            ``revoke_previous_access_on_refresh`` and ``echo_credentials_in_errors`` (into
            ``raw``, or ``error_description`` when not wrapped) apply. ``reuse_revokes_family``
            applies too and catches a rotated-away token even with
            ``revoke_old_refresh_token=False``. ``basic_form_encoded`` is ignored:
            node-oauth2-server 2.x reads Basic verbatim, never form-decoded. So is
            ``trailing_slash_token_path``: Express routes ``/oauth2/token/`` the same.
    """

    json_content_type = _CONTENT_TYPE

    def __init__(
        self,
        *,
        tenants: Mapping[str, Mapping[str, str]] | None = None,
        ttl: float = 3600.0,
        refresh_token_ttl: float | None = DEFAULT_REFRESH_TOKEN_TTL,
        revoke_old_refresh_token: bool = True,
        wrapped_errors: bool = True,
        validate_client_id: bool = True,
        unauthorized_status: int = 401,
        now: Callable[[], float] = time.time,
        quirks: WorldQuirks | None = None,
        **switches: Unpack[QuirkOptions],
    ) -> None:
        super().__init__(
            ttl=ttl, refresh_token_ttl=refresh_token_ttl, now=now, quirks=quirks, **switches
        )
        source = tenants if tenants is not None else {DEMO_TENANT: {DEMO_EMAIL: DEMO_PASSWORD}}
        self.tenants = {name.lower(): dict(users) for name, users in source.items()}
        self.revoke_old_refresh_token = revoke_old_refresh_token
        self.wrapped_errors = wrapped_errors
        self.validate_client_id = validate_client_id
        self.unauthorized_status = unauthorized_status

    def seed_refresh_token(
        self, username: str, *, tenant: str | None = None, client_id: str = "aerion-web"
    ) -> str:
        """Mint a refresh token out of band, as the web app's SSO login would."""
        company = (tenant or next(iter(self.tenants))).lower()
        return self._seed(client_id=client_id, username=username, tenant=company)

    def user_id(self, tenant: str, email: str) -> int:
        """The stable integer ``user.id`` reported for ``email`` in ``tenant``."""
        digest = hashlib.sha256(f"{tenant.lower()}:{email.lower()}".encode()).hexdigest()
        return int(digest[:6], 16)

    # -- plumbing ---------------------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
        # Every method is routed so the handler can give node-oauth2-server's own answer.
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        token = self._endpoint(self._token, target="token", grant_of=form_grant)
        me = self._endpoint(self._me, target="api")
        routes: list[BaseRoute] = []
        for path, endpoint, allowed in (
            ("/oauth2/token", token, methods),
            ("/v1/users/me", me, ["GET"]),
        ):
            # Express routing is not strict: a trailing slash reaches the same handler.
            routes.append(Route(path, endpoint, methods=allowed))
            routes.append(Route(path + "/", endpoint, methods=allowed))
        return routes

    def _mint_access_token(
        self, *, client_id: str, username: str | None, issued_at: float, expires_at: float
    ) -> str:
        return secrets.token_hex(20)

    def _mint_refresh_token(self) -> str:
        return secrets.token_hex(20)

    def _error_body(self, error: str, description: str, status: int) -> dict[str, Any]:
        if self.wrapped_errors:
            summary = _SUMMARY.get(status, "Error")
            return {"error": error, "status": status, "summary": summary, "raw": description}
        return {"code": status, "error": error, "error_description": description}

    def _default_error_body(self, status: int) -> Mapping[str, Any]:
        return self._error_body("server_error", f"Injected failure ({status})", status)

    def _with_leak(self, body: dict[str, Any], leak: str) -> dict[str, Any]:
        field = "raw" if "raw" in body else "error_description"
        return {**body, field: f"{body.get(field, '')}{leak}"}

    def _token_error(self, error: str, description: str, status: int = 400) -> Response:
        headers = {"WWW-Authenticate": 'Basic realm="Service"'} if error == "invalid_client" else {}
        body = self._error_body(error, description, status)
        return json_response(body, status, content_type=_CONTENT_TYPE, headers=headers)

    def _users(self, tenant: str) -> dict[str, str] | None:
        users = self.tenants.get(tenant.lower())
        return None if users is None else {email.lower(): pw for email, pw in users.items()}

    def _request_tenant(self, record: RecordedRequest) -> str | None:
        for name in TENANT_HEADERS:
            value = record.headers.get(name)
            if value:
                return company_of(value)
        # A company host (acme.aerion.app) counts only if it names a known tenant, so that
        # neutral hosts like api.aerion.app or 127.0.0.1 are not mistaken for one.
        host_company = company_of(record.headers.get("host", ""))
        return host_company if host_company in self.tenants else None

    # -- handlers (called with the lock held) -----------------------------------------------

    def _token(self, request: Request, record: RecordedRequest) -> Response:
        # The checks and their order follow node-oauth2-server 2.x lib/grant.js.
        form = record.form  # set exactly when the body is application/x-www-form-urlencoded
        if request.method != "POST" or form is None:
            return self._token_error(
                "invalid_request",
                "Method must be POST with application/x-www-form-urlencoded encoding",
            )
        grant = form.get("grant_type")
        if not grant:
            return self._token_error("invalid_request", "Invalid or missing grant_type parameter")
        basic = parse_basic(record.headers.get("authorization"), form_decode=False)
        client_id, client_secret = (
            (basic.username, basic.password)
            if basic is not None
            else (form.get("client_id", ""), form.get("client_secret", ""))
        )
        if not client_id or (self.validate_client_id and not CLIENT_ID_PATTERN.match(client_id)):
            return self._token_error("invalid_client", "Invalid or missing client_id parameter")
        if not client_secret:
            return self._token_error("invalid_client", "Missing client_secret parameter")
        if grant == "password":
            return self._password(record, form, client_id)
        if grant == "refresh_token":
            return self._refresh(record, form, client_id)
        return self._token_error("unsupported_grant_type", f"Unsupported grant type: {grant}")

    def _password(self, record: RecordedRequest, form: dict[str, str], client_id: str) -> Response:
        username, password = form.get("username"), form.get("password")
        if not username or not password:
            return self._token_error(
                "invalid_client", 'Missing parameters. "username" and "password" are required'
            )
        tenant = self._request_tenant(record)
        if tenant is None:
            return self._token_error("invalid_request", "Missing origin/referrer/companyurl header")
        users = self._users(tenant)
        if users is None or users.get(username.lower()) != password:
            return self._token_error("invalid_grant", "User credentials are invalid")
        access = self._issue_access(client_id=client_id, username=username, tenant=tenant)
        refresh = self._issue_refresh(
            client_id=client_id, username=username, tenant=tenant, family=access.family
        )
        return self._granted(access, refresh.token)

    def _refresh(self, record: RecordedRequest, form: dict[str, str], client_id: str) -> Response:
        token = form.get("refresh_token")
        if not token:
            return self._token_error("invalid_request", 'No "refresh_token" parameter')
        self._detect_reuse(token)
        state = self._tokens.refresh_state(token, self.now())
        old = self._tokens.refresh(token)
        if old is None or state in (TokenState.UNKNOWN, TokenState.REVOKED):
            return self._token_error("invalid_grant", "Invalid refresh token")
        if state is TokenState.EXPIRED:
            return self._token_error("invalid_grant", "Refresh token has expired")
        tenant = self._request_tenant(record)
        if tenant is not None and tenant != old.tenant:
            return self._token_error("invalid_grant", "Invalid refresh token")
        # Not bound to the client id: client ids are free text, and SSO-minted refresh tokens
        # must be usable by any API client (Aerion docs).
        access = self._refresh_access(old, client_id=client_id, tenant=old.tenant)
        new = self._rotate(old, revoke_old=self.revoke_old_refresh_token, client_id=client_id)
        return self._granted(access, new.token)

    def _granted(self, access: AccessGrant, refresh_token: str) -> Response:
        # Field order as in node-oauth2-server 2.x and the CoffeeCup docs.
        body = {
            "token_type": "bearer",
            "access_token": access.token,
            "expires_in": int(self.ttl),
            "refresh_token": refresh_token,
        }
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        return json_response(body, content_type=_CONTENT_TYPE, headers=headers)

    def _me(self, request: Request, record: RecordedRequest) -> Response:
        authorization = record.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._unauthorized("The access token was not found")
        state = self._tokens.access_state(token.strip(), self.now())
        grant = self._tokens.access(token.strip())
        if state is TokenState.EXPIRED:
            return self._unauthorized("The access token provided has expired.")
        if state is not TokenState.VALID or grant is None:
            return self._unauthorized("The access token provided is invalid.")
        email = grant.username or ""
        local = email.split("@", 1)[0]
        user = {
            "id": self.user_id(grant.tenant or "", email),
            "email": email,
            "firstname": local.capitalize(),
            "lastname": (grant.tenant or "").capitalize(),
            "status": 1,
        }
        return json_response({"user": user}, content_type=_CONTENT_TYPE)

    def _unauthorized(self, raw: str) -> Response:
        status = self.unauthorized_status
        code = "E_FORBIDDEN" if status == 403 else "E_UNAUTHORIZED"
        body = {
            "error": code,
            "status": status,
            "summary": _SUMMARY.get(status, "Error"),
            "raw": raw,
        }
        return json_response(body, status, content_type=_CONTENT_TYPE)
