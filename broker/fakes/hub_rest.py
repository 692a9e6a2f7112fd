"""Hub's REST resources besides OAuth: who am I, OIDC discovery, and the admin API
(service registration, a user's refresh tokens). :class:`~broker.fakes.hub.FakeHub` is built
on :class:`HubRest`; the attributes it declares are set there.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from broker.fakes.authorize import LoginProvider
from broker.fakes.hub_model import HubService, project, service_from_json, service_json
from broker.fakes.recording import RecordedRequest
from broker.fakes.tokens import AccessGrant, TokenState
from broker.fakes.wire import bearer_token, json_response

HUB_SERVICE_ID = "0-0-0-0-0"

# Hub answers JSON with this exact spelling.
CONTENT_TYPE = "application/json;charset=UTF-8"
STATE_TEXT = {
    TokenState.EXPIRED: "Token is expired",
    TokenState.REVOKED: "Token is revoked",
    TokenState.UNKNOWN: "Token is unknown",
}


class HubRest(LoginProvider):
    """The REST endpoints of the fake Hub (handlers called with the lock held)."""

    base_path: str
    services: dict[str, HubService]
    users: dict[str, str]
    banned_users: set[str]
    admin_token: str | None

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

    def _json(
        self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response:
        return json_response(body, status, content_type=CONTENT_TYPE, headers=headers)

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
                {"error": "Unauthorized", "error_description": STATE_TEXT[state]}, 401
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
        return self._json(project(user, record.query.get("fields"), tuple(user)))

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

    def _register_service(self, request: Request, record: RecordedRequest) -> Response:
        """``POST /api/rest/services?fields=id,secret``: a new service, usable at once."""
        token = bearer_token(record.headers.get("authorization"))
        if token is None:
            text = "Bearer token is required"
            return self._json({"error": "Unauthorized", "error_description": text}, 401)
        if self.admin_token is None or token != self.admin_token:
            if self._tokens.access_state(token, self.now()) is TokenState.VALID:
                return self._forbidden("Only an administrator may create services")
            text = "Token is unknown"
            return self._json({"error": "Unauthorized", "error_description": text}, 401)
        service = service_from_json(record.json)
        if isinstance(service, str):
            return self._json({"error": "Bad Request", "error_description": service}, 400)
        self.services[service.id] = service
        body = service_json(service)
        return self._json(project(body, record.query.get("fields"), ("type", "id", "name")))

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
