"""Fake HIRO (arago) Auth API v6 / 6.6 (protocol doc §1 and checklist §5.1).

Serves ``GET /api/version`` and, under ``/api/auth/<auth_version>`` (plus ``/api/auth/6``,
``/api/auth/6.6`` and the legacy ``/api/6/auth``, trailing slash optional):

- ``POST /app``      JSON password login → ``{_TOKEN, _APPLICATION, _IDENTITY, _IDENTITY_ID,
  expires-at (int ms), refresh_token, type}``
- ``POST /refresh``  JSON refresh, same response shape; rotation configurable
- ``POST /token``    6.6 OAuth2-style form endpoint (client via Basic or body): ``password``,
  ``refresh_token`` and ``authorization_code`` (``code``, ``code_verifier``, ``redirect_uri``)
- ``GET``/``POST /authorize``  6.6 code flow with PKCE: the login form, then
  ``302 redirect_uri?code=..&state=..`` (:mod:`broker.fakes.authorize`)
- ``GET``/``POST /ui/``  the UI (implicit) flow: ``?client_id=..&redirect_url=..``, the login
  form, then ``302 <redirect_url>#accessoken=<token>`` (the seed doc's spelling)
- ``POST /revoke``   JSON, both body shapes, always ``200 {}``
- ``GET  /me/account`` (and ``/me/profile``, ``/me/roles``, ``/me/teams``) with a Bearer token

Every failure is HTTP 401/400 with ``{"error": {"message": ..., "code": ...}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Unpack

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from broker.fakes.authorize import GrantError, Login, LoginProvider, refused_page
from broker.fakes.base import GrantOf, Handler, Target, form_grant
from broker.fakes.hiro_tokens import hiro_id, make_token, version_document
from broker.fakes.pages import html_response, login_page
from broker.fakes.quirks import QuirkOptions, WorldQuirks
from broker.fakes.recording import RecordedRequest
from broker.fakes.redirects import redirect_allowed, redirect_to
from broker.fakes.tokens import AccessGrant, RefreshGrant, TokenState
from broker.fakes.wire import bearer_token, json_response

DEMO_USERNAME = "demo@example.com"
DEMO_PASSWORD = "demo-password"
DEMO_CLIENT_ID = "cbroker0demo0hiro0client0_cbroker0demo0hiro0client0"
DEMO_CLIENT_SECRET = "demo-client-secret"

_STATE_TEXT = {
    TokenState.EXPIRED: "expired",
    TokenState.REVOKED: "revoked",
    TokenState.UNKNOWN: "unknown",
}


def _password_grant(_: RecordedRequest) -> str:
    return "password"  # /app is HIRO's password grant


def _refresh_grant(_: RecordedRequest) -> str:
    return "refresh_token"


class FakeHiro(LoginProvider):
    """A fake HIRO auth server.

    Args:
        users: username → password.
        clients: client_id → client_secret.
        auth_version: served by ``/api/version`` (``"6"`` or ``"6.6"``; the official clients
            switch behaviour on it) and used as the primary mount prefix.
        ttl: access-token lifetime in seconds (``expires-at`` = issue time + ttl).
        refresh_token_ttl: refresh-token lifetime in seconds; ``None`` = never expires.
        rotate_refresh_tokens: 6.6 behaviour, a new refresh token on every refresh. ``False``
            returns the same one until it would expire before the new access token (pre-6.6).
        old_refresh_token_valid_after_rotation: keep the previous refresh token usable.
        expires_in_as_string: ``/token`` sends ``expires_in`` as ``"3600"`` (arago's mock) or 3600.
        legacy_error_codes: bad credentials answer HTTP 401 with inner ``code: 400`` and a
            wrapped ``invalid_grant`` message, like arago's graph_conn mock.
        redirect_uris: client_id → the URLs registered for it in HIRO IAM, for both
            ``redirect_uri`` (``/authorize``) and ``redirect_url`` (``/ui/``); a client not
            listed may use any loopback URL with a port. Others: a 400 page, no redirect.
        public_clients: client ids that may use ``/token``'s ``authorization_code`` and
            ``refresh_token`` grants with ``client_id`` alone (default none).
        code_ttl, require_pkce, allow_plain_pkce, code_reuse_revokes: the code-flow options of
            :class:`~broker.fakes.oauth2.FakeOAuth2` (60 s codes, S256 required, reuse revokes).
            Code errors are HTTP 400 ``{"error": {"message": "invalid_grant: ...", "code"}}``.
        now: the fake's clock, epoch seconds.
        quirks, **switches: the :class:`~broker.fakes.base.WorldQuirks`. Refreshes on
            ``/refresh`` and ``/token`` alike honour ``revoke_previous_access_on_refresh`` and
            ``reuse_revokes_family`` (which catches a rotated-away token even with
            ``old_refresh_token_valid_after_rotation=True``; with ``rotate_refresh_tokens=False``
            only the pre-6.6 near-expiry rotation can trip it). ``basic_form_encoded`` applies to
            Basic on ``/token``; errors on ``/app``, ``/refresh`` and ``/token`` echo the
            request into ``error.message``. ``trailing_slash_token_path`` is ignored: HIRO
            serves every path with and without the slash.
    """

    login_title = "HIRO (fake)"
    id_tokens = False

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        clients: Mapping[str, str] | None = None,
        auth_version: str = "6",
        ttl: float = 3600.0,
        refresh_token_ttl: float | None = None,
        rotate_refresh_tokens: bool = True,
        old_refresh_token_valid_after_rotation: bool = False,
        expires_in_as_string: bool = True,
        legacy_error_codes: bool = False,
        redirect_uris: Mapping[str, Iterable[str]] | None = None,
        public_clients: Iterable[str] = (),
        code_ttl: float = 60.0,
        require_pkce: bool = True,
        allow_plain_pkce: bool = False,
        code_reuse_revokes: bool = True,
        now: Callable[[], float] = time.time,
        quirks: WorldQuirks | None = None,
        **switches: Unpack[QuirkOptions],
    ) -> None:
        super().__init__(
            ttl=ttl,
            refresh_token_ttl=refresh_token_ttl,
            now=now,
            quirks=quirks,
            redirect_uris=redirect_uris,
            public_clients=public_clients,
            code_ttl=code_ttl,
            require_pkce=require_pkce,
            allow_plain_pkce=allow_plain_pkce,
            code_reuse_revokes=code_reuse_revokes,
            issuer=None,
            **switches,
        )
        self.users = dict(users if users is not None else {DEMO_USERNAME: DEMO_PASSWORD})
        self.clients = dict(
            clients if clients is not None else {DEMO_CLIENT_ID: DEMO_CLIENT_SECRET}
        )
        self.auth_version = auth_version
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.old_refresh_token_valid_after_rotation = old_refresh_token_valid_after_rotation
        self.expires_in_as_string = expires_in_as_string
        self.legacy_error_codes = legacy_error_codes

    # -- public helpers ---------------------------------------------------------------------

    def seed_refresh_token(self, username: str, *, client_id: str | None = None) -> str:
        """Mint a refresh token for ``username`` out of band (as a UI login would)."""
        return self._seed(client_id=client_id or next(iter(self.clients)), username=username)

    def identity_id(self, username: str) -> str:
        """The ``_IDENTITY_ID`` this fake reports for ``username``."""
        return hiro_id(f"identity:{username}")

    # -- routing ----------------------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
        login = ["GET", "POST"]
        table: list[tuple[str, list[str], Handler, Target | None, GrantOf | None]] = [
            ("/app", ["POST"], self._app_login, "token", _password_grant),
            ("/refresh", ["POST"], self._refresh, "token", _refresh_grant),
            ("/token", ["POST"], self._token, "token", form_grant),
            ("/authorize", login, self._authorize, "authorize", None),
            ("/ui", login, self._ui, "authorize", None),
            ("/revoke", ["POST"], self._revoke, None, None),
            ("/me/account", ["GET"], self._me_account, "api", None),
            ("/me/profile", ["GET"], self._me_profile, "api", None),
            ("/me/roles", ["GET"], self._me_items, "api", None),
            ("/me/teams", ["GET"], self._me_items, "api", None),
        ]
        prefixes = dict.fromkeys(
            [f"/api/auth/{self.auth_version}", "/api/auth/6", "/api/auth/6.6", "/api/6/auth"]
        )
        routes: list[BaseRoute] = [
            Route("/api/version", self._endpoint(self._version), methods=["GET"])
        ]
        for prefix in prefixes:
            for sub, methods, handler, target, grant_of in table:
                endpoint = self._endpoint(handler, target=target, grant_of=grant_of)
                for path in (prefix + sub, prefix + sub + "/"):
                    routes.append(Route(path, endpoint, methods=methods))
        return routes

    # -- responses --------------------------------------------------------------------------

    def _error(self, status: int, message: str, *, code: int | None = None) -> Response:
        return json_response({"error": {"message": message, "code": code or status}}, status)

    def _bad_credentials(self, username: str) -> Response:
        if self.legacy_error_codes:
            inner = json.dumps(
                {
                    "error_description": f"Authentication failed for {username}",
                    "error": "invalid_grant",
                },
                separators=(",", ":"),
            )
            return self._error(401, f"Bad Request : {inner}", code=400)
        return self._error(401, f"Authentication failed for {username}")

    def _default_error_body(self, status: int) -> Mapping[str, Any]:
        return self._http_error_body(status, f"Injected failure ({status})")

    def _http_error_body(self, status: int, message: str) -> Mapping[str, Any]:
        return {"error": {"message": message, "code": status}}

    def _with_leak(self, body: dict[str, Any], leak: str) -> dict[str, Any]:
        inner = body.get("error")
        if not isinstance(inner, dict):
            return super()._with_leak(body, leak)
        return {**body, "error": {**inner, "message": f"{inner.get('message', '')}{leak}"}}

    def _mint_access_token(
        self, *, client_id: str, username: str | None, issued_at: float, expires_at: float
    ) -> str:
        return make_token(
            client_id=client_id, username=username or "", issued_at=issued_at, expires_at=expires_at
        )

    def _session_body(self, access: AccessGrant, refresh_token: str) -> dict[str, Any]:
        username = access.username or ""
        return {
            "_TOKEN": access.token,
            "_APPLICATION": access.client_id,
            "_IDENTITY": username,
            "_IDENTITY_ID": self.identity_id(username),
            # Milliseconds since the epoch, as a JSON integer: Java clients cast it to long.
            "expires-at": int(access.expires_at * 1000),
            "refresh_token": refresh_token,
            "type": "Bearer",
        }

    def _oauth_body(self, access: AccessGrant, refresh_token: str) -> dict[str, Any]:
        expires_in = int(self.ttl)
        return {
            "access_token": access.token,
            "expires_in": str(expires_in) if self.expires_in_as_string else expires_in,
            "token_type": "Bearer",
            "refresh_token": refresh_token,
        }

    # -- grant logic ------------------------------------------------------------------------

    def _client_ok(self, client_id: Any, client_secret: Any) -> bool:
        # Known clients only: an unknown id without a secret must not match as None == None.
        if not isinstance(client_id, str) or client_id not in self.clients:
            return False
        return isinstance(client_secret, str) and self.clients[client_id] == client_secret

    def _login(self, client_id: str, username: str) -> tuple[AccessGrant, str]:
        access = self._issue_access(client_id=client_id, username=username)
        refresh = self._issue_refresh(client_id=client_id, username=username, family=access.family)
        return access, refresh.token

    def _use_refresh_token(self, client_id: str, token: Any) -> tuple[AccessGrant, str] | Response:
        """Redeem a refresh token: a new access token plus the (possibly rotated) refresh token."""
        if not isinstance(token, str) or not token:
            return self._error(401, "Missing refresh_token")
        self._detect_reuse(token)
        state = self._tokens.refresh_state(token, self.now())
        old = self._tokens.refresh(token)
        if state is not TokenState.VALID or old is None:
            return self._error(401, f"Refresh token is {_STATE_TEXT.get(state, 'invalid')}")
        if old.client_id != client_id:
            return self._error(401, "Refresh token was issued to another application")
        access = self._refresh_access(old, client_id=client_id)
        return access, self._next_refresh_token(old, access)

    def _next_refresh_token(self, old: RefreshGrant, access: AccessGrant) -> str:
        # Pre-6.6: "refresh_token would be the same unless it would expire before current
        # access_token". 6.6: a new one on every refresh.
        dies_first = old.expires_at is not None and old.expires_at < access.expires_at
        if not (self.rotate_refresh_tokens or dies_first):
            return old.token
        revoke_old = not self.old_refresh_token_valid_after_rotation
        return self._rotate(old, revoke_old=revoke_old).token

    # -- handlers (called with the lock held) -----------------------------------------------

    def _version(self, request: Request, record: RecordedRequest) -> Response:
        return json_response(version_document(self.auth_version))

    def _app_login(self, request: Request, record: RecordedRequest) -> Response:
        body = record.json
        if not isinstance(body, dict):
            return self._error(400, "Request body must be a JSON object")
        # Only the four documented keys matter; grant_type, organization, ... are ignored.
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            return self._error(400, "Missing username or password")
        if not self._client_ok(body.get("client_id"), body.get("client_secret")):
            return self._bad_credentials(username)
        if self.users.get(username) != password:
            return self._bad_credentials(username)
        access, refresh_token = self._login(body["client_id"], username)
        return json_response(self._session_body(access, refresh_token))

    def _refresh(self, request: Request, record: RecordedRequest) -> Response:
        body = record.json
        if not isinstance(body, dict):
            return self._error(400, "Request body must be a JSON object")
        client_id = body.get("client_id")
        if not isinstance(client_id, str) or not self._client_ok(
            client_id, body.get("client_secret")
        ):
            return self._error(401, "Invalid client credentials")
        outcome = self._use_refresh_token(client_id, body.get("refresh_token"))
        if isinstance(outcome, Response):
            return outcome
        return json_response(self._session_body(*outcome))

    def _token(self, request: Request, record: RecordedRequest) -> Response:
        form = record.form
        if form is None or request.method != "POST":
            return self._error(400, "Expected application/x-www-form-urlencoded body")
        # Basic (seed doc) or body (arago's Java client): both are accepted.
        basic = self._basic_client(
            record.headers.get("authorization"), lambda c: self._client_ok(c.username, c.password)
        )
        client_id, client_secret = (
            (basic.username, basic.password)
            if basic is not None
            else (form.get("client_id", ""), form.get("client_secret"))
        )
        grant = form.get("grant_type")
        public = basic is None and client_secret is None and client_id in self.public_clients
        if not self._client_ok(client_id, client_secret) and not (
            public and grant in ("authorization_code", "refresh_token")
        ):
            return self._error(401, "Invalid client credentials")
        if grant == "password":
            username = form.get("username", "")
            if not username or self.users.get(username) != form.get("password"):
                return self._bad_credentials(username)
            return json_response(self._oauth_body(*self._login(client_id, username)))
        if grant == "refresh_token":
            outcome = self._use_refresh_token(client_id, form.get("refresh_token"))
            if isinstance(outcome, Response):
                return outcome
            return json_response(self._oauth_body(*outcome))
        if grant == "authorization_code":
            try:
                return self._code_grant(request, client_id, form)
            except GrantError as err:
                return self._error(400, f"{err.error}: {err.description}")
        return self._error(400, f"unsupported_grant_type: {grant!r}")

    # -- the login hooks (authorize.LoginProvider) and the UI flow ---------------------------

    def _client_known(self, client_id: str) -> bool:
        return client_id in self.clients or client_id in self.public_clients

    def _user_ok(self, username: str, password: str) -> bool:
        return username in self.users and self.users[username] == password

    def _login_response(self, request: Request, login: Login) -> tuple[Response, str]:
        access, refresh_token = self._login(login.client_id, login.username)
        return json_response(self._oauth_body(access, refresh_token)), access.family

    def _ui(self, request: Request, record: RecordedRequest) -> Response:
        """The UI flow: a login form, then ``302 <redirect_url>#accessoken=<token>``."""
        params = (record.form or {}) if request.method == "POST" else record.query
        client_id, url = params.get("client_id", ""), params.get("redirect_url", "")
        if not self._client_known(client_id):
            return refused_page(f"Unknown application {client_id!r}")
        if not redirect_allowed(url, self._registered_redirects(client_id)):
            return refused_page("redirect_url is not assigned to this application")
        username, error = params.get("username", ""), None
        if request.method == "POST":
            action = params.get("action")
            if action == "deny":
                return redirect_to(url, {"error": "access_denied"}, fragment=True)
            if action == "allow" and self._user_ok(username, params.get("password", "")):
                token = self._issue_access(client_id=client_id, username=username).token
                # The seed doc's spelling, "accessoken"; the token is JWT-shaped, URL-safe.
                return redirect_to(url, {"accessoken": token}, fragment=True)
            error = "Wrong username or password" if action == "allow" else "Choose Allow or Deny"
        page = login_page(
            provider=self.login_title,
            action=request.url.path,
            hidden={"client_id": client_id, "redirect_url": url},
            client=client_id,
            scope="",
            username=username,
            error=error,
        )
        return html_response(page, 200 if error is None else 401)

    def _revoke(self, request: Request, record: RecordedRequest) -> Response:
        body = record.json if isinstance(record.json, dict) else {}
        # 6.6 shape {token, token_hint} or legacy {refresh_token}. The Java client sends a
        # refresh token under token_hint=access_token, so the hint is ignored: whatever the
        # token is, it dies. Unknown tokens still get 200, as in RFC 7009.
        token = body.get("token") or body.get("refresh_token")
        if isinstance(token, str):
            self._tokens.revoke_refresh(token)
            self._tokens.revoke_access(token)
        return json_response({})

    def _authorised(self, record: RecordedRequest) -> AccessGrant | Response:
        token = bearer_token(record.headers.get("authorization"))
        if token is None:
            return self._error(401, "Missing Bearer token")
        state = self._tokens.access_state(token, self.now())
        grant = self._tokens.access(token)
        if state is not TokenState.VALID or grant is None:
            return self._error(401, f"Token is {_STATE_TEXT.get(state, 'invalid')}")
        return grant

    def _me_account(self, request: Request, record: RecordedRequest) -> Response:
        grant = self._authorised(record)
        if isinstance(grant, Response):
            return grant
        username = grant.username or ""
        return json_response(
            {
                "ogit/_id": self.identity_id(username),
                "ogit/_type": "ogit/Auth/Account",
                "ogit/name": username,
                "ogit/status": "active",
            }
        )

    def _me_profile(self, request: Request, record: RecordedRequest) -> Response:
        grant = self._authorised(record)
        if isinstance(grant, Response):
            return grant
        username = grant.username or ""
        return json_response(
            {
                "ogit/_id": hiro_id(f"profile:{username}"),
                "ogit/_type": "ogit/Auth/AccountProfile",
                "ogit/Auth/Account/displayName": username,
            }
        )

    def _me_items(self, request: Request, record: RecordedRequest) -> Response:
        grant = self._authorised(record)
        if isinstance(grant, Response):
            return grant
        return json_response({"items": []})
