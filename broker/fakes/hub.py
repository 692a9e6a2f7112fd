"""Fake JetBrains Hub OAuth 2.0 (protocol doc §3 and checklist §5.3).

Everything lives under ``base_path`` (``""`` or e.g. ``"/hub"``):

- ``POST /api/rest/oauth2/token``  form (or query-string) ``client_credentials``, ``password``
  and ``refresh_token`` grants; client via Basic (primary) or body. Refresh tokens are never
  rotated: a refresh response has no ``refresh_token`` and the old one stays valid.
- ``GET /api/rest/users/me``, ``/api/rest/services/me``, ``/api/rest/oauth2/userinfo``
- ``GET /.well-known/openid-configuration``
- admin ``GET /api/rest/users/{user}/refreshtokens`` and
  ``DELETE /api/rest/users/{user}/refreshtokens/{id}`` (unauthenticated in this fake)

There is no revocation endpoint, as on the real Hub.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Unpack

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from broker.fakes.base import FakeProvider, form_grant
from broker.fakes.quirks import QuirkOptions, WorldQuirks
from broker.fakes.recording import RecordedRequest
from broker.fakes.tokens import AccessGrant, TokenState
from broker.fakes.wire import BasicCredentials, bearer_token, has_basic_scheme, json_response

HUB_SERVICE_ID = "0-0-0-0-0"
YOUTRACK_SERVICE_ID = "9a2e6c1b-4f3d-4e8a-b7c5-1d0f2e3a4b5c"
DEMO_SERVICE_ID = "3f6a0c8e-2b1d-4c7a-9e5f-8d4b6a2c0e1f"
DEMO_SERVICE_SECRET = "demo-service-secret"
DEMO_LOGIN = "demo"
DEMO_PASSWORD = "demo-password"

# Hub answers JSON with this exact spelling.
CONTENT_TYPE = "application/json;charset=UTF-8"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_STATE_TEXT = {
    TokenState.EXPIRED: "Token is expired",
    TokenState.REVOKED: "Token is revoked",
    TokenState.UNKNOWN: "Token is unknown",
}


@dataclass
class HubService:
    """A service (OAuth client) registered in the fake Hub."""

    id: str
    secret: str
    trusted: bool = True
    client_credentials_enabled: bool = True
    password_enabled: bool = True
    name: str = "Broker demo service"


class FakeHub(FakeProvider):
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
        now: the fake's clock, epoch seconds.
        quirks, **switches: the :class:`~broker.fakes.base.WorldQuirks`.
            ``revoke_previous_access_on_refresh``, ``basic_form_encoded`` and
            ``echo_credentials_in_errors`` apply. ``reuse_revokes_family`` never fires: Hub
            does not rotate refresh tokens, so none is ever rotated away.
            ``trailing_slash_token_path`` is ignored (Hub's path has no trailing slash).
    """

    json_content_type = CONTENT_TYPE

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
        now: Callable[[], float] = time.time,
        quirks: WorldQuirks | None = None,
        **switches: Unpack[QuirkOptions],
    ) -> None:
        super().__init__(
            ttl=ttl, refresh_token_ttl=refresh_token_ttl, now=now, quirks=quirks, **switches
        )
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

    def refresh_token_id(self, rt: str) -> str:
        """The id by which the admin API addresses refresh token ``rt``."""
        with self._lock:
            grant = self._tokens.refresh(rt)
            if grant is None:
                raise KeyError("unknown refresh token")
            return grant.id

    def user_id(self, login: str) -> str:
        """The stable Hub user id of ``login``."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"hub-user:{login}"))

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

    def _json(
        self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response:
        return json_response(body, status, content_type=CONTENT_TYPE, headers=headers)

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

    def _granted(self, access: AccessGrant, refresh_token: str | None) -> Response:
        body: dict[str, Any] = {
            "access_token": access.token,
            "token_type": "Bearer",
            "expires_in": int(self.ttl),
            "scope": " ".join(access.scope),
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        return self._json(body, headers=_NO_STORE)

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
        if service is None or service.secret != secret:
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
            # The fake never issues codes, so every code is unknown.
            return self._token_error("invalid_grant", "Authorization code is unknown")
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
            return self._token_error("invalid_grant", f"Refresh {_STATE_TEXT[state].lower()}")
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

    # -- protected and admin endpoints ------------------------------------------------------

    def _authorised(self, record: RecordedRequest) -> AccessGrant | Response:
        token = bearer_token(record.headers.get("authorization"))
        if token is None:
            return self._json(
                {"error": "Unauthorized", "error_description": "Bearer token is required"}, 401
            )
        state = self._tokens.access_state(token, self.now())
        grant = self._tokens.access(token)
        if grant is None or state is not TokenState.VALID:
            return self._json(
                {"error": "Unauthorized", "error_description": _STATE_TEXT[state]}, 401
            )
        return grant

    def _forbidden(self, description: str) -> Response:
        # 403 means "no permission": clients must not treat it as a dead token.
        return self._json({"error": "Forbidden", "error_description": description}, 403)

    def _user_object(self, login: str) -> dict[str, Any]:
        return {
            "type": "user",
            "id": self.user_id(login),
            "login": login,
            "name": login.capitalize(),
            "guest": False,
            "banned": login in self.banned_users,
        }

    def _users_me(self, request: Request, record: RecordedRequest) -> Response:
        grant = self._authorised(record)
        if isinstance(grant, Response):
            return grant
        if grant.username is None:
            return self._forbidden("Token was issued to a service, not a user")
        if HUB_SERVICE_ID not in grant.scope:
            return self._forbidden("Token scope does not include Hub")
        user = self._user_object(grant.username)
        fields = record.query.get("fields")
        if fields:
            # Honour ?fields= loosely: keep the requested top-level names, ignore nesting.
            wanted = {f.split("(", 1)[0].strip() for f in fields.split(",")}
            user = {k: v for k, v in user.items() if k in wanted}
        return self._json(user)

    def _services_me(self, request: Request, record: RecordedRequest) -> Response:
        grant = self._authorised(record)
        if isinstance(grant, Response):
            return grant
        service = self.services.get(grant.client_id)
        return self._json(
            {
                "type": "service",
                "id": grant.client_id,
                "name": service.name if service else grant.client_id,
                "trusted": bool(service and service.trusted),
            }
        )

    def _userinfo(self, request: Request, record: RecordedRequest) -> Response:
        grant = self._authorised(record)
        if isinstance(grant, Response):
            return grant
        if grant.username is None:
            return self._forbidden("Token was issued to a service, not a user")
        login = grant.username
        return self._json(
            {"sub": self.user_id(login), "name": login.capitalize(), "preferred_username": login}
        )

    def _discovery(self, request: Request, record: RecordedRequest) -> Response:
        hub = str(request.base_url).rstrip("/") + self.base_path
        return self._json(
            {
                "issuer": hub,
                "authorization_endpoint": f"{hub}/api/rest/oauth2/auth",
                "token_endpoint": f"{hub}/api/rest/oauth2/token",
                "userinfo_endpoint": f"{hub}/api/rest/oauth2/userinfo",
                "jwks_uri": f"{hub}/api/rest/oauth2/keys",
                "grant_types_supported": [
                    "authorization_code",
                    "client_credentials",
                    "password",
                    "refresh_token",
                    "implicit",
                ],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
                "scopes_supported": ["openid", "offline_access", "profile", "email", "groups"],
                "response_types_supported": ["code", "token", "id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    def _login_of(self, user: str) -> str | None:
        if user in self.users:
            return user
        return next((login for login in self.users if self.user_id(login) == user), None)

    def _list_rts(self, request: Request, record: RecordedRequest) -> Response:
        login = self._login_of(request.path_params["user"])
        if login is None:
            return self._json({"error": "Not Found", "error_description": "No such user"}, 404)
        items = [
            {
                "id": g.id,
                "client": {"id": g.client_id},
                "scope": [{"id": s} for s in g.scope],
                "user": {"id": self.user_id(login)},
                "creationTime": int(g.issued_at * 1000),
                "lastAccessTime": int(g.issued_at * 1000),
            }
            for g in self._tokens.refresh_grants()
            if g.username == login and not g.revoked
        ]
        return self._json(
            {"skip": 0, "top": len(items), "total": len(items), "refreshtokens": items}
        )

    def _delete_rt(self, request: Request, record: RecordedRequest) -> Response:
        login = self._login_of(request.path_params["user"])
        grant = self._tokens.refresh_by_id(request.path_params["rt_id"])
        if login is None or grant is None or grant.username != login or grant.revoked:
            return self._json(
                {"error": "Not Found", "error_description": "No such refresh token"}, 404
            )
        grant.revoked = True
        return Response(status_code=200)
