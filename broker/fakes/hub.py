"""Fake JetBrains Hub OAuth 2.0 (protocol doc §3 and checklist §5.3).

Everything lives under ``base_path`` (``""`` or e.g. ``"/hub"``):

- ``POST /api/rest/oauth2/token``  form (or query-string) ``client_credentials``, ``password``,
  ``refresh_token`` and ``authorization_code`` (PKCE) grants; client via Basic (primary) or
  body, an untrusted service's PKCE login by ``client_id`` alone. Refresh tokens are never
  rotated: a refresh response has no ``refresh_token`` and the old one stays valid.
- ``GET``/``POST /api/rest/oauth2/auth``  the login form: authorization code
  (``response_type=code``, ``access_type=offline`` for a refresh token) and implicit
  (``response_type=token``: ``#access_token=..&token_type=..&expires_in=..&scope=..&state=..``)
- ``GET /api/rest/users/me``, ``/api/rest/services/me``, ``/api/rest/oauth2/userinfo``
- ``GET /.well-known/openid-configuration``, ``GET /api/rest/oauth2/keys`` (the JWKS)
- admin ``POST /api/rest/services?fields=id,secret`` (Bearer ``admin_token``) registers a
  service (:mod:`broker.fakes.hub_model`), ``GET /api/rest/users/{user}/refreshtokens`` and
  ``DELETE /api/rest/users/{user}/refreshtokens/{id}`` (unauthenticated in this fake)

There is no revocation endpoint, as on the real Hub.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Unpack

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from broker.fakes.authorize import GrantError, Login
from broker.fakes.base import form_grant
from broker.fakes.hub_model import HubService
from broker.fakes.hub_rest import CONTENT_TYPE, HUB_SERVICE_ID, STATE_TEXT, HubRest
from broker.fakes.quirks import QuirkOptions, WorldQuirks
from broker.fakes.recording import RecordedRequest
from broker.fakes.tokens import AccessGrant, TokenState
from broker.fakes.wire import BasicCredentials, has_basic_scheme

YOUTRACK_SERVICE_ID = "9a2e6c1b-4f3d-4e8a-b7c5-1d0f2e3a4b5c"
DEMO_SERVICE_ID = "3f6a0c8e-2b1d-4c7a-9e5f-8d4b6a2c0e1f"
DEMO_SERVICE_SECRET = "demo-service-secret"
DEMO_LOGIN = "demo"
DEMO_PASSWORD = "demo-password"
DEMO_ADMIN_TOKEN = "demo-admin-token"
OIDC_SCOPES = ("openid", "offline_access", "profile", "email", "groups")
"""Scope values that are no service id: kept as they are (Hub's discovery lists them)."""
__all__ = [
    "CONTENT_TYPE",
    "DEMO_ADMIN_TOKEN",
    "DEMO_LOGIN",
    "DEMO_PASSWORD",
    "DEMO_SERVICE_ID",
    "DEMO_SERVICE_SECRET",
    "HUB_SERVICE_ID",
    "OIDC_SCOPES",
    "YOUTRACK_SERVICE_ID",
    "FakeHub",
    "HubService",
]

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class FakeHub(HubRest):
    """A fake JetBrains Hub.

    Args:
        base_path: Hub URL path prefix, ``""`` or e.g. ``"/hub"``.
        services: service id → :class:`HubService`; default one trusted demo service.
        users: login → password.
        ttl: access-token lifetime in seconds (``expires_in`` is its integer part).
        known_scopes: service ids valid as scope; default Hub (``0-0-0-0-0``) and YouTrack.
        scope_names: scope names accepted instead of ids (``YouTrack`` → its id).
        refresh_token_ttl: refresh-token lifetime (Hub ≥ 2023.1); ``None`` = never expires.
        require_scope_for_password: reject a password grant without ``scope`` (the docs say
            "Required"); by default it falls back to ``0-0-0-0-0``.
        echo_refresh_token_on_refresh: send the (same) refresh token back on refresh.
        error_code_in_body: add ``error_code`` (the HTTP status) to token error bodies.
        admin_token: the Bearer token ``POST /api/rest/services`` needs (default
            ``demo-admin-token``; ``None``: nobody may register). Another valid token → 403.
        code_ttl, require_pkce, allow_plain_pkce, code_reuse_revokes: the login options of
            :class:`~broker.fakes.oauth2.FakeOAuth2` (60 s codes, S256 required, reuse revokes).
            A service's redirect URIs are its ``redirect_uris`` (none: any loopback URI).
        issuer: ``iss`` of ID tokens (``openid`` scope); default the Hub URL of the request.
        now: the fake's clock, epoch seconds.
        quirks, **switches: the :class:`~broker.fakes.base.WorldQuirks`.
            ``revoke_previous_access_on_refresh``, ``basic_form_encoded`` and
            ``echo_credentials_in_errors`` apply. ``reuse_revokes_family`` never fires: Hub
            does not rotate refresh tokens, so none is ever rotated away.
            ``trailing_slash_token_path`` is ignored (Hub's path has no trailing slash).

    Scopes at the login are service ids or names, plus the OIDC values; none means Hub
    (``0-0-0-0-0``). ``openid`` adds an ``id_token`` whose ``sub`` is the user id.
    """

    json_content_type = CONTENT_TYPE
    login_title = "JetBrains Hub (fake)"
    response_types = ("code", "token")
    carried_params = ("access_type",)

    def __init__(
        self,
        *,
        base_path: str = "",
        services: Mapping[str, HubService] | None = None,
        users: Mapping[str, str] | None = None,
        ttl: float = 3600.0,
        known_scopes: Iterable[str] | None = None,
        scope_names: Mapping[str, str] | None = None,
        refresh_token_ttl: float | None = None,
        require_scope_for_password: bool = False,
        echo_refresh_token_on_refresh: bool = False,
        error_code_in_body: bool = False,
        admin_token: str | None = DEMO_ADMIN_TOKEN,
        code_ttl: float = 60.0,
        require_pkce: bool = True,
        allow_plain_pkce: bool = False,
        code_reuse_revokes: bool = True,
        issuer: str | None = None,
        now: Callable[[], float] = time.time,
        quirks: WorldQuirks | None = None,
        **switches: Unpack[QuirkOptions],
    ) -> None:
        super().__init__(
            ttl=ttl,
            refresh_token_ttl=refresh_token_ttl,
            now=now,
            quirks=quirks,
            redirect_uris=None,
            public_clients=(),
            code_ttl=code_ttl,
            require_pkce=require_pkce,
            allow_plain_pkce=allow_plain_pkce,
            code_reuse_revokes=code_reuse_revokes,
            issuer=issuer,
            **switches,
        )
        self.admin_token = admin_token
        self.base_path = base_path.rstrip("/")
        default_service = HubService(DEMO_SERVICE_ID, DEMO_SERVICE_SECRET)
        self.services = dict(
            services if services is not None else {DEMO_SERVICE_ID: default_service}
        )
        self.users = dict(users if users is not None else {DEMO_LOGIN: DEMO_PASSWORD})
        self.known_scopes = set(
            known_scopes if known_scopes is not None else {HUB_SERVICE_ID, YOUTRACK_SERVICE_ID}
        )
        self.scope_names = dict(
            scope_names
            if scope_names is not None
            else {"Hub": HUB_SERVICE_ID, "YouTrack": YOUTRACK_SERVICE_ID}
        )
        self.require_scope_for_password = require_scope_for_password
        self.echo_refresh_token_on_refresh = echo_refresh_token_on_refresh
        self.error_code_in_body = error_code_in_body
        self.banned_users: set[str] = set()
        """Logins that are banned: their password and refresh grants fail with invalid_grant."""

    # -- public helpers ---------------------------------------------------------------------

    def seed_refresh_token(
        self, username: str, *, client_id: str | None = None, scope: Iterable[str] | None = None
    ) -> str:
        """Mint a refresh token for ``username`` and service ``client_id`` out of band."""
        return self._seed(
            client_id=client_id or next(iter(self.services)),
            username=username,
            scope=tuple(scope or (HUB_SERVICE_ID,)),
        )

    # -- plumbing ---------------------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
        base = self.base_path
        rest = f"{base}/api/rest"
        ep = self._endpoint
        return [
            Route(
                f"{rest}/oauth2/token",
                ep(self._token, target="token", grant_of=form_grant),
                methods=["POST"],
            ),
            Route(
                f"{rest}/oauth2/auth",
                ep(self._authorize, target="authorize"),
                methods=["GET", "POST"],
            ),
            Route(f"{rest}/oauth2/keys", ep(self._jwks), methods=["GET"]),
            Route(f"{rest}/services", ep(self._register_service), methods=["POST"]),
            Route(f"{rest}/users/me", ep(self._users_me, target="api"), methods=["GET"]),
            Route(f"{rest}/services/me", ep(self._services_me, target="api"), methods=["GET"]),
            Route(f"{rest}/oauth2/userinfo", ep(self._userinfo, target="api"), methods=["GET"]),
            Route(f"{base}/.well-known/openid-configuration", ep(self._discovery), methods=["GET"]),
            Route(f"{rest}/users/{{user}}/refreshtokens", ep(self._list_rts), methods=["GET"]),
            Route(
                f"{rest}/users/{{user}}/refreshtokens/{{rt_id}}",
                ep(self._delete_rt),
                methods=["DELETE"],
            ),
        ]

    def _mint_access_token(
        self, *, client_id: str, username: str | None, issued_at: float, expires_at: float
    ) -> str:
        return f"{int(issued_at * 1000)}.{client_id}.{secrets.token_urlsafe(24)}"

    def _mint_refresh_token(self) -> str:
        return f"{int(self.now() * 1000)}.{secrets.token_urlsafe(32)}"

    def _default_error_body(self, status: int) -> Mapping[str, Any]:
        return {"error": "server_error", "error_description": f"Injected failure ({status})"}

    def _http_error_body(self, status: int, message: str) -> Mapping[str, Any]:
        return {"error": message, "error_description": message}

    def _token_error(
        self, error: str, description: str, *, status: int = 400, basic: bool = False
    ) -> Response:
        body: dict[str, Any] = {"error": error, "error_description": description}
        if self.error_code_in_body:
            body["error_code"] = status
        headers = dict(_NO_STORE)
        if error == "invalid_client" and basic:
            # RFC 6749 §5.2: a client that used the Authorization header gets 401 + challenge.
            status = 401
            headers["WWW-Authenticate"] = 'Basic realm="Hub"'
        return self._json(body, status, headers)

    def _scope(self, raw: str | None, default: tuple[str, ...]) -> tuple[str, ...] | None:
        """Resolve a space-separated scope to service ids; ``None`` if any item is unknown."""
        if raw is None or not raw.strip():
            return default
        ids: list[str] = []
        for item in raw.split():
            sid = item if item in self.known_scopes else self.scope_names.get(item)
            if sid is None:
                return None
            if sid not in ids:
                ids.append(sid)
        return tuple(ids)

    def _granted(
        self, access: AccessGrant, refresh_token: str | None, id_token: str | None = None
    ) -> Response:
        body: dict[str, Any] = {
            "access_token": access.token,
            "token_type": "Bearer",
            "expires_in": int(self.ttl),
            "scope": " ".join(access.scope),
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        if id_token is not None:
            body["id_token"] = id_token
        return self._json(body, headers=_NO_STORE)

    # -- the login hooks (authorize.LoginProvider) ------------------------------------------

    def _client_known(self, client_id: str) -> bool:
        return client_id in self.services

    def _user_ok(self, username: str, password: str) -> bool:
        known = username in self.users and self.users[username] == password
        return known and username not in self.banned_users

    def _registered_redirects(self, client_id: str) -> Sequence[str] | None:
        return self.services[client_id].redirect_uris or None

    def _login_scope(self, raw: str | None) -> tuple[str, ...] | None:
        items = (raw or "").split()
        oidc = tuple(dict.fromkeys(i for i in items if i in OIDC_SCOPES))
        services = self._scope(
            " ".join(i for i in items if i not in OIDC_SCOPES), (HUB_SERVICE_ID,)
        )
        return None if services is None else (*services, *oidc)

    def _response_type_allowed(self, client_id: str, response_type: str) -> bool:
        service = self.services[client_id]
        return service.implicit_enabled if response_type == "token" else service.auth_code_enabled

    def _subject(self, username: str) -> str:
        return self.user_id(username)

    def _issuer(self, request: Request) -> str:
        return self.issuer or str(request.base_url).rstrip("/") + self.base_path

    def _login_response(self, request: Request, login: Login) -> tuple[Response, str]:
        access = self._issue_access(
            client_id=login.client_id, username=login.username, scope=login.scope
        )
        refresh_token = None
        if login.extra.get("access_type") == "offline":
            refresh_token = self._issue_refresh(
                client_id=login.client_id,
                username=login.username,
                scope=login.scope,
                family=access.family,
            ).token
        id_token = self._id_token(request, login, access)
        return self._granted(access, refresh_token, id_token), access.family

    def _implicit(self, request: Request, login: Login) -> dict[str, str]:
        # RFC 6749 §4.2.2: no refresh token in the implicit grant.
        access = self._issue_access(
            client_id=login.client_id, username=login.username, scope=login.scope
        )
        return {
            "access_token": access.token,
            "token_type": "Bearer",
            "expires_in": str(int(self.ttl)),
            "scope": " ".join(access.scope),
        }

    def _public_login(self, service: HubService | None, params: dict[str, str]) -> bool:
        """An untrusted service's PKCE login or its refresh: ``client_id`` alone suffices.

        Hub's docs: "For public clients (untrusted services) Auth Header can be omitted but,
        in this case, client_id parameter becomes required."
        """
        if service is None or service.trusted or "client_secret" in params:
            return False
        grant = params.get("grant_type")
        if grant == "authorization_code":
            return bool(params.get("code_verifier"))
        if grant == "refresh_token":
            refresh = self._tokens.refresh(params.get("refresh_token", ""))
            return refresh is not None and refresh.family in self._pkce_families
        return False

    # -- token endpoint (called with the lock held) -----------------------------------------

    def _token(self, request: Request, record: RecordedRequest) -> Response:
        # Old JetBrains clients put the parameters in the query string of the POST.
        params = {**record.query, **(record.form or {})}
        authorization = record.headers.get("authorization")
        basic_used = has_basic_scheme(authorization)
        if basic_used:
            basic = self._basic_client(authorization, self._service_accepts)
            client_id, secret = (basic.username, basic.password) if basic else ("", "")
        else:
            client_id, secret = params.get("client_id", ""), params.get("client_secret", "")
        service = self.services.get(client_id)
        if not client_id:
            return self._token_error("invalid_client", "Client authentication is required")
        public = not basic_used and self._public_login(service, params)
        if service is None or (service.secret != secret and not public):
            return self._token_error(
                "invalid_client", "Client authentication failed", basic=basic_used
            )
        grant = params.get("grant_type")
        if grant == "client_credentials":
            return self._client_credentials(service, params)
        if grant == "password":
            return self._password(service, params)
        if grant == "refresh_token":
            return self._refresh(service, params)
        if grant == "authorization_code":
            try:
                return self._code_grant(request, service.id, params)
            except GrantError as err:
                return self._token_error(err.error, err.description)
        if not grant:
            return self._token_error("invalid_request", "Parameter grant_type is required")
        return self._token_error("unsupported_grant_type", f"Unsupported grant type: {grant}")

    def _service_accepts(self, creds: BasicCredentials) -> bool:
        service = self.services.get(creds.username)
        return service is not None and service.secret == creds.password

    def _client_credentials(self, service: HubService, params: dict[str, str]) -> Response:
        if not (service.trusted and service.client_credentials_enabled):
            return self._token_error(
                "unauthorized_client", "Client credentials flow is not allowed for this service"
            )
        scope = self._scope(params.get("scope"), (HUB_SERVICE_ID,))
        if scope is None:
            return self._token_error("invalid_scope", "Scope does not match any registered service")
        access = self._issue_access(client_id=service.id, username=None, scope=scope)
        # Client credentials never get a refresh token.
        return self._granted(access, None)

    def _password(self, service: HubService, params: dict[str, str]) -> Response:
        if not service.password_enabled:
            return self._token_error(
                "unauthorized_client", "Resource owner flow is not allowed for this service"
            )
        if self.require_scope_for_password and not params.get("scope", "").strip():
            return self._token_error("invalid_request", "Parameter scope is required")
        scope = self._scope(params.get("scope"), (HUB_SERVICE_ID,))
        if scope is None:
            return self._token_error("invalid_scope", "Scope does not match any registered service")
        login = params.get("username", "")
        if not login or self.users.get(login) != params.get("password"):
            return self._token_error("invalid_grant", "Invalid resource owner credentials")
        if login in self.banned_users:
            return self._token_error("invalid_grant", "User is banned")
        access = self._issue_access(client_id=service.id, username=login, scope=scope)
        refresh_token = None
        if params.get("access_type") == "offline":
            refresh = self._issue_refresh(
                client_id=service.id, username=login, scope=scope, family=access.family
            )
            refresh_token = refresh.token
        return self._granted(access, refresh_token)

    def _refresh(self, service: HubService, params: dict[str, str]) -> Response:
        token = params.get("refresh_token", "")
        if not token:
            return self._token_error("invalid_request", "Parameter refresh_token is required")
        state = self._tokens.refresh_state(token, self.now())
        old = self._tokens.refresh(token)
        if old is None or state is not TokenState.VALID:
            return self._token_error("invalid_grant", f"Refresh {STATE_TEXT[state].lower()}")
        if old.client_id != service.id:
            return self._token_error(
                "invalid_grant", "Refresh token was issued to another client service"
            )
        if old.username in self.banned_users:
            return self._token_error("invalid_grant", "The owner of the refresh token is banned")
        # Hub: "if omitted is treated as equal to the scope originally granted".
        scope = self._scope(params.get("scope"), old.scope)
        if scope is None:
            return self._token_error("invalid_scope", "Scope does not match any registered service")
        if not set(scope) <= set(old.scope):
            return self._token_error("invalid_scope", "Requested scope exceeds the granted scope")
        access = self._refresh_access(old, client_id=service.id, scope=scope)
        # No rotation: the old refresh token stays valid and is normally not sent back.
        return self._granted(access, old.token if self.echo_refresh_token_on_refresh else None)
