"""Fake generic OAuth 2.0 authorization server: the RFC baseline of protocol doc §0.

- ``POST <token_path>``  RFC 6749 ``client_credentials``, ``password``, ``refresh_token`` and
  ``authorization_code`` (RFC 7636 PKCE) grants and RFC 8628's device code grant; client
  authentication per §2.3.1 (Basic, or body parameters, never both), public clients by
  ``client_id`` alone; success per §5.1 and errors per §5.2. Optionally a 3xx redirect to
  the real token endpoint.
- ``GET``/``POST /authorize``  the login form and its answer (:mod:`broker.fakes.authorize`).
- ``POST /device_authorization``, ``GET``/``POST /device``  RFC 8628 (:mod:`broker.fakes.device`).
- ``POST /oauth/revoke``  RFC 7009 revocation (always 200).
- ``GET /userinfo`` and ``GET /me``  Bearer-protected, RFC 6750 errors.
- ``GET /.well-known/oauth-authorization-server`` (RFC 8414) and
  ``/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0): the same document.
- ``GET /jwks``  the key ID tokens are signed with (RS256).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Unpack

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from broker.fakes.authorize import GrantError, Login
from broker.fakes.base import form_grant
from broker.fakes.device import DEVICE_CODE_GRANT, DeviceProvider
from broker.fakes.quirks import QuirkOptions, WorldQuirks
from broker.fakes.recording import RecordedRequest
from broker.fakes.tokens import AccessGrant, TokenState
from broker.fakes.wire import bearer_token, has_basic_scheme, json_response

ClientAuth = Literal["client_secret_basic", "client_secret_post", "any"]

DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"
DEMO_PUBLIC_CLIENT_ID = "demo-public-client"
DEMO_USERNAME = "demo@example.com"
DEMO_PASSWORD = "demo-password"
REVOKE_PATH = "/oauth/revoke"
AUTHORIZE_PATH = "/authorize"
DEVICE_AUTHORIZATION_PATH = "/device_authorization"
JWKS_PATH = "/jwks"
PUBLIC_GRANTS = ("authorization_code", "refresh_token", DEVICE_CODE_GRANT)
"""The grants a public client (no secret) may use; others are ``unauthorized_client``."""
GRANT_TYPES = ("client_credentials", "password", *PUBLIC_GRANTS)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_OAuthError = GrantError
"""An RFC 6749 §5.2 error; raised inside the token handler, rendered in one place."""


class FakeOAuth2(DeviceProvider):
    """A strict RFC 6749 authorization server, with a person's login and the device grant.

    Args:
        clients: client_id → client_secret (confidential clients).
        users: username → password (password grant and the login forms).
        ttl: access-token lifetime in seconds (``expires_in`` is its integer part).
        token_path: path of the token endpoint, taken verbatim (``"/o/token/"`` serves only
            the slashed spelling; ``"/o/token"`` then answers the fake's JSON 404).
        redirect_token_path_to: when set, ``POST <token_path>`` answers ``redirect_status``
            with this ``Location`` instead of a token (a moved server, Django's APPEND_SLASH).
            A path (``"/o/token/"``) is resolved against the fake's own URL and the token
            endpoint is served there; a full URL points anywhere, e.g. at another fake.
        redirect_status: the redirect's status: 301, 302, 303, 307 or 308.
        client_auth: accepted client authentication: Basic only, body only, or either.
        rotate_refresh_tokens: issue a new refresh token on every refresh.
        revoke_rotated_refresh_tokens: when rotating, kill the old refresh token (RFC 6749 §6
            allows either).
        include_expires_in: ``False`` omits ``expires_in`` (RFC: only "recommended").
        required_params: token-request parameters that must be present with these values
            (e.g. ``{"audience": "https://api"}``), else ``invalid_request``.
        required_headers: request headers that must be present with these values.
        refresh_token_ttl: refresh-token lifetime; ``None`` = never expires.
        public_clients: client ids without a secret (default ``demo-public-client``): they send
            ``client_id`` in the body and nothing else, may use only ``authorization_code``
            (always with PKCE), the device grant and ``refresh_token``.
        redirect_uris: client_id → registered redirect URIs. A client not listed may use any
            loopback URI with a port (``http://127.0.0.1:<port>/...``, ``localhost``, ``[::1]``);
            a registered ``127.0.0.1`` URI matches on any port (RFC 8252 §7.3).
        code_ttl: lifetime of an authorization code, seconds of ``now`` (default 60).
        require_pkce: refuse a code request without ``code_challenge`` (public clients always
            need one).
        allow_plain_pkce: accept ``code_challenge_method=plain`` (and a missing method, which
            means plain); off, only ``S256``.
        code_reuse_revokes: a code presented again revokes the tokens issued from it
            (RFC 6749 §4.1.2); the reuse is ``invalid_grant`` either way.
        issuer: ``iss`` of ID tokens and of the metadata; default the URL the request came to.
            The endpoints in the metadata always name the URL the request came to.
        device_code_ttl: ``expires_in`` of a device code (default 600 s).
        device_interval: the polling ``interval`` a device code starts with (default 5 s).
        now: the fake's clock, epoch seconds.
        quirks, **switches: the :class:`~broker.fakes.base.WorldQuirks`; all apply here.
            ``trailing_slash_token_path`` appends ``/`` to ``token_path`` (Django style).
            ``reuse_revokes_family`` catches a rotated-away refresh token even when
            ``revoke_rotated_refresh_tokens=False`` keeps it valid otherwise; with
            ``rotate_refresh_tokens=False`` nothing rotates, so it never fires.

    Logins by code or device grant get an access and a refresh token (rotating as above) and,
    with ``openid`` in the scope, an ``id_token`` (``sub`` is the username). Every option is
    also a mutable attribute, read when used.
    """

    login_title = "Fake OAuth2"

    def __init__(
        self,
        *,
        clients: Mapping[str, str] | None = None,
        users: Mapping[str, str] | None = None,
        ttl: float = 3600.0,
        token_path: str = "/oauth/token",
        redirect_token_path_to: str | None = None,
        redirect_status: int = 308,
        client_auth: ClientAuth = "any",
        rotate_refresh_tokens: bool = True,
        revoke_rotated_refresh_tokens: bool = True,
        include_expires_in: bool = True,
        required_params: Mapping[str, str] | None = None,
        required_headers: Mapping[str, str] | None = None,
        refresh_token_ttl: float | None = None,
        public_clients: Iterable[str] | None = None,
        redirect_uris: Mapping[str, Iterable[str]] | None = None,
        code_ttl: float = 60.0,
        require_pkce: bool = True,
        allow_plain_pkce: bool = False,
        code_reuse_revokes: bool = True,
        issuer: str | None = None,
        device_code_ttl: float = 600.0,
        device_interval: int = 5,
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
            public_clients=(DEMO_PUBLIC_CLIENT_ID,) if public_clients is None else public_clients,
            code_ttl=code_ttl,
            require_pkce=require_pkce,
            allow_plain_pkce=allow_plain_pkce,
            code_reuse_revokes=code_reuse_revokes,
            issuer=issuer,
            device_code_ttl=device_code_ttl,
            device_interval=device_interval,
            **switches,
        )
        self.clients = dict(
            clients if clients is not None else {DEMO_CLIENT_ID: DEMO_CLIENT_SECRET}
        )
        self.users = dict(users if users is not None else {DEMO_USERNAME: DEMO_PASSWORD})
        self.token_path = token_path
        self.redirect_token_path_to = redirect_token_path_to
        self.redirect_status = redirect_status
        self.client_auth: ClientAuth = client_auth
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.revoke_rotated_refresh_tokens = revoke_rotated_refresh_tokens
        self.include_expires_in = include_expires_in
        self.required_params = dict(required_params or {})
        self.required_headers = {k.lower(): v for k, v in (required_headers or {}).items()}

    def seed_refresh_token(
        self, username: str, *, client_id: str | None = None, scope: tuple[str, ...] = ()
    ) -> str:
        """Mint a refresh token for ``username`` and ``client_id`` out of band."""
        return self._seed(
            client_id=client_id or next(iter(self.clients)), username=username, scope=scope
        )

    @property
    def served_token_path(self) -> str:
        """The path ``POST`` must use: ``token_path``, slashed if ``trailing_slash_token_path``."""
        if self.trailing_slash_token_path and not self.token_path.endswith("/"):
            return self.token_path + "/"
        return self.token_path

    # -- plumbing ---------------------------------------------------------------------------

    def _token_routes(self) -> list[BaseRoute]:
        """The token endpoint, or a redirect there; only POST is routed, so GET gets a 405."""
        token = self._endpoint(self._token, target="token", grant_of=form_grant)
        target = self.redirect_token_path_to
        if target is None:
            return [Route(self.served_token_path, token, methods=["POST"])]
        if target == self.served_token_path:
            raise ValueError(f"token path {target!r} would redirect to itself")
        redirect = self._endpoint(self._redirect, target="token", grant_of=form_grant)
        routes: list[BaseRoute] = [Route(self.served_token_path, redirect, methods=["POST"])]
        if target.startswith("/"):
            routes.append(Route(target, token, methods=["POST"]))
        return routes

    def _routes(self) -> list[BaseRoute]:
        ep = self._endpoint
        me = ep(self._me, target="api")
        metadata = ep(self._metadata)
        return [
            *self._token_routes(),
            Route(AUTHORIZE_PATH, ep(self._authorize, target="authorize"), methods=["GET", "POST"]),
            Route(
                DEVICE_AUTHORIZATION_PATH,
                ep(self._device_authorization, target="device"),
                methods=["POST"],
            ),
            Route(self.verification_path, ep(self._verification), methods=["GET", "POST"]),
            Route(REVOKE_PATH, ep(self._revoke), methods=["POST"]),
            Route("/userinfo", me, methods=["GET"]),
            Route("/me", me, methods=["GET"]),
            Route("/.well-known/oauth-authorization-server", metadata, methods=["GET"]),
            Route("/.well-known/openid-configuration", metadata, methods=["GET"]),
            Route(JWKS_PATH, ep(self._jwks), methods=["GET"]),
        ]

    # -- the login hooks (authorize.LoginProvider, device.DeviceProvider) --------------------

    def _client_known(self, client_id: str) -> bool:
        return client_id in self.clients or self._is_public(client_id)

    def _is_public(self, client_id: str) -> bool:
        return client_id in self.public_clients and client_id not in self.clients

    def _user_ok(self, username: str, password: str) -> bool:
        return username in self.users and self.users[username] == password

    def _login_response(self, request: Request, login: Login) -> tuple[Response, str]:
        access = self._issue_access(
            client_id=login.client_id, username=login.username, scope=login.scope
        )
        refresh = self._issue_refresh(
            client_id=login.client_id,
            username=login.username,
            scope=login.scope,
            family=access.family,
        )
        id_token = self._id_token(request, login, access)
        return self._granted(access, refresh.token, id_token), access.family

    def _error(self, err: _OAuthError) -> Response:
        headers = dict(_NO_STORE)
        status = 400
        if err.error == "invalid_client" and err.basic:
            # RFC 6749 §5.2: MUST be 401 with a challenge when the Authorization header was used.
            status = 401
            headers["WWW-Authenticate"] = 'Basic realm="fake-oauth2"'
        body = {"error": err.error, "error_description": err.description}
        return json_response(body, status, headers=headers)

    _grant_error = _error

    def _authenticate_client(self, record: RecordedRequest, form: dict[str, str]) -> str:
        """Return the authenticated client id or raise ``invalid_client`` / ``invalid_request``."""
        authorization = record.headers.get("authorization")
        basic_used = has_basic_scheme(authorization)
        body_used = "client_id" in form or "client_secret" in form
        if basic_used and body_used:
            raise _OAuthError(
                "invalid_request", "Use only one client authentication method", basic=True
            )
        if basic_used:
            if self.client_auth == "client_secret_post":
                raise _OAuthError("invalid_client", "Use client_secret_post", basic=True)
            creds = self._basic_client(
                authorization, lambda c: self.clients.get(c.username) == c.password
            )
            if creds is None or self.clients.get(creds.username) != creds.password:
                raise _OAuthError("invalid_client", "Client authentication failed", basic=True)
            return creds.username
        if not body_used:
            raise _OAuthError("invalid_client", "Client authentication is required")
        client_id = form.get("client_id", "")
        if self._is_public(client_id) and "client_secret" not in form:
            return client_id  # a public client: its id is all it has (RFC 6749 §2.1)
        if self.client_auth == "client_secret_basic":
            raise _OAuthError("invalid_client", "Use client_secret_basic")
        if client_id not in self.clients or self.clients[client_id] != form.get("client_secret"):
            raise _OAuthError("invalid_client", "Client authentication failed")
        return client_id

    def _check_required(self, record: RecordedRequest, form: dict[str, str]) -> None:
        for name, value in self.required_params.items():
            if form.get(name) != value:
                raise _OAuthError("invalid_request", f"Missing or invalid parameter: {name}")
        for name, value in self.required_headers.items():
            if record.headers.get(name) != value:
                raise _OAuthError("invalid_request", f"Missing or invalid header: {name}")

    def _granted(
        self, access: AccessGrant, refresh_token: str | None, id_token: str | None = None
    ) -> Response:
        body: dict[str, Any] = {"access_token": access.token, "token_type": "Bearer"}
        if self.include_expires_in:
            body["expires_in"] = int(self.ttl)
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        if access.scope:
            body["scope"] = " ".join(access.scope)
        if id_token is not None:
            body["id_token"] = id_token
        return json_response(body, headers=_NO_STORE)

    # -- handlers (called with the lock held) -----------------------------------------------

    def _redirect(self, request: Request, record: RecordedRequest) -> Response:
        target = self.redirect_token_path_to or ""
        if target.startswith("/"):
            target = str(request.base_url).rstrip("/") + target
        return RedirectResponse(target, status_code=self.redirect_status)

    def _token(self, request: Request, record: RecordedRequest) -> Response:
        try:
            form = record.form
            if form is None:
                raise _OAuthError(
                    "invalid_request", "Body must be application/x-www-form-urlencoded"
                )
            client_id = self._authenticate_client(record, form)
            self._check_required(record, form)
            grant = form.get("grant_type")
            scope = tuple(form.get("scope", "").split())
            if self._is_public(client_id) and grant not in PUBLIC_GRANTS:
                raise _OAuthError("unauthorized_client", f"A public client cannot use {grant}")
            if grant == "authorization_code":
                return self._code_grant(request, client_id, form)
            if grant == DEVICE_CODE_GRANT:
                return self._device_grant(request, client_id, form)
            if grant == "client_credentials":
                access = self._issue_access(client_id=client_id, username=None, scope=scope)
                return self._granted(access, None)
            if grant == "password":
                return self._password(client_id, form, scope)
            if grant == "refresh_token":
                return self._refresh(client_id, form, scope)
            if not grant:
                raise _OAuthError("invalid_request", "Missing grant_type")
            raise _OAuthError("unsupported_grant_type", f"Unsupported grant type: {grant}")
        except _OAuthError as err:
            return self._error(err)

    def _password(self, client_id: str, form: dict[str, str], scope: tuple[str, ...]) -> Response:
        username = form.get("username", "")
        if not username or "password" not in form:
            raise _OAuthError("invalid_request", "Missing username or password")
        if self.users.get(username) != form["password"]:
            raise _OAuthError("invalid_grant", "Invalid resource owner credentials")
        access = self._issue_access(client_id=client_id, username=username, scope=scope)
        refresh = self._issue_refresh(
            client_id=client_id, username=username, scope=scope, family=access.family
        )
        return self._granted(access, refresh.token)

    def _refresh(self, client_id: str, form: dict[str, str], scope: tuple[str, ...]) -> Response:
        token = form.get("refresh_token", "")
        if not token:
            raise _OAuthError("invalid_request", "Missing refresh_token")
        self._detect_reuse(token)
        old = self._tokens.refresh(token)
        state = self._tokens.refresh_state(token, self.now())
        if old is None or state is not TokenState.VALID:
            raise _OAuthError("invalid_grant", f"Refresh token is {state.value}")
        if old.client_id != client_id:
            raise _OAuthError("invalid_grant", "Refresh token was issued to another client")
        if not set(scope) <= set(old.scope):
            raise _OAuthError("invalid_scope", "Requested scope exceeds the original grant")
        access = self._refresh_access(old, client_id=client_id, scope=scope or old.scope)
        if not self.rotate_refresh_tokens:
            return self._granted(access, None)
        new = self._rotate(old, revoke_old=self.revoke_rotated_refresh_tokens)
        return self._granted(access, new.token)

    def _revoke(self, request: Request, record: RecordedRequest) -> Response:
        form = record.form or {}
        try:
            self._authenticate_client(record, form)
        except _OAuthError as err:
            return self._error(err)
        # RFC 7009 §2.2: 200 even for unknown tokens; the hint is only an optimisation.
        token = form.get("token", "")
        self._tokens.revoke_refresh(token)
        self._tokens.revoke_access(token)
        return Response(status_code=200)

    def _me(self, request: Request, record: RecordedRequest) -> Response:
        token = bearer_token(record.headers.get("authorization"))
        if token is None:
            # RFC 6750 §3.1: no error code when the request carried no credentials.
            return json_response(
                {},
                401,
                headers={"WWW-Authenticate": 'Bearer realm="fake-oauth2"'},
            )
        grant = self._tokens.access(token)
        state = self._tokens.access_state(token, self.now())
        if grant is None or state is not TokenState.VALID:
            description = f"The access token is {state.value}"
            challenge = (
                f'Bearer realm="fake-oauth2", error="invalid_token", '
                f'error_description="{description}"'
            )
            return json_response(
                {"error": "invalid_token", "error_description": description},
                401,
                headers={"WWW-Authenticate": challenge},
            )
        return json_response(
            {
                "sub": grant.username or grant.client_id,
                "client_id": grant.client_id,
                "scope": " ".join(grant.scope),
                "exp": int(grant.expires_at),
            }
        )

    def _metadata(self, request: Request, record: RecordedRequest) -> Response:
        """RFC 8414 and OpenID Connect Discovery 1.0 §3: one document for both paths."""
        base = str(request.base_url).rstrip("/")
        methods: list[str] = (
            ["client_secret_basic", "client_secret_post"]
            if self.client_auth == "any"
            else [self.client_auth]
        )
        if self.public_clients - set(self.clients):
            methods.append("none")
        return json_response(
            {
                "issuer": self._issuer(request),
                "authorization_endpoint": base + AUTHORIZE_PATH,
                "token_endpoint": base + self.served_token_path,
                "device_authorization_endpoint": base + DEVICE_AUTHORIZATION_PATH,
                "jwks_uri": base + JWKS_PATH,
                "revocation_endpoint": base + REVOKE_PATH,
                "userinfo_endpoint": base + "/userinfo",
                "grant_types_supported": list(GRANT_TYPES),
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "code_challenge_methods_supported": (
                    ["S256", "plain"] if self.allow_plain_pkce else ["S256"]
                ),
                "token_endpoint_auth_methods_supported": methods,
                "scopes_supported": ["openid", "offline_access"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce"],
            }
        )
