"""A person's login at a fake: the authorization endpoint, codes, PKCE and ID tokens.

:class:`LoginProvider` is the base of the fakes a person logs in to (FakeOAuth2, FakeHub,
FakeHiro). It serves the RFC 6749 §4.1 authorization code grant with RFC 7636 PKCE, and the
§4.2 implicit grant where the provider has one:

- ``GET <authorize>`` validates the request and answers a login form (:mod:`.pages`) whose
  hidden fields carry the request; ``POST <authorize>`` validates it again, checks the person
  and answers ``302`` to ``redirect_uri?code=..&state=..`` (implicit: ``#access_token=..``).
  Deny → ``error=access_denied``. Bad ``client_id`` or ``redirect_uri`` → a ``400`` page,
  never a redirect (§4.1.2.1); any other bad request → the error redirect.
- Codes are random, single use, live ``code_ttl`` seconds of the fake's clock and are bound to
  the client, the ``redirect_uri`` and the PKCE challenge. A reused code is ``invalid_grant``
  and, with ``code_reuse_revokes`` (on by default, §4.1.2), revokes every token issued from it.
- ``openid`` in the scope adds an ID token (:mod:`.idtoken`) to the token response.

Subclasses supply the client registry, the users, the paths and the token format (hooks below).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NoReturn, Unpack

from starlette.requests import Request
from starlette.responses import Response

from broker.fakes.base import FakeProvider
from broker.fakes.idtoken import IdTokenSigner, id_token_claims
from broker.fakes.pages import html_response, login_page, message_page
from broker.fakes.pkce import challenge_problem, verifier_problem
from broker.fakes.quirks import QuirkOptions, WorldQuirks
from broker.fakes.recording import RecordedRequest
from broker.fakes.redirects import redirect_allowed, redirect_to
from broker.fakes.tokens import AccessGrant
from broker.fakes.wire import json_response

AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "nonce",
    "prompt",
)
"""The authorization-request parameters every login fake reads (OIDC Core §3.1.2.1 subset)."""


class GrantError(Exception):
    """An RFC 6749 §5.2 token-endpoint error; each fake renders it in its own format.

    ``basic`` says the client authenticated with the ``Authorization`` header, which makes
    ``invalid_client`` a 401 with a challenge where the fake follows the RFC.
    """

    def __init__(self, error: str, description: str, *, basic: bool = False) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.basic = basic


@dataclass(frozen=True)
class AuthRequest:
    """A validated authorization request; ``raw`` is what came in, carried by the form."""

    client_id: str
    redirect_uri: str
    redirect_uri_given: bool
    response_type: str
    scope: tuple[str, ...]
    state: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    raw: dict[str, str]


@dataclass
class AuthCode:
    """An issued authorization code; ``family`` is set once tokens were issued from it."""

    code: str
    request: AuthRequest
    username: str
    auth_time: float
    expires_at: float
    used: bool = False
    family: str | None = None


@dataclass(frozen=True)
class Login:
    """A person's login ready to become tokens: from a code, a device grant or a UI flow."""

    client_id: str
    username: str
    scope: tuple[str, ...]
    auth_time: float
    nonce: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    """Provider parameters of the authorization request, e.g. Hub's ``access_type``."""


class _Refusal(Exception):
    """A refused authorization request: redirected back when ``redirect_uri`` is known."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        redirect_uri: str | None = None,
        state: str | None = None,
        fragment: bool = False,
    ) -> None:
        super().__init__(description)
        self.error, self.description = error, description
        self.redirect_uri, self.state, self.fragment = redirect_uri, state, fragment


def refused_page(description: str, status: int = 400) -> Response:
    """The page for a request that must not redirect (bad client or redirect URI)."""
    return html_response(message_page("Authorization request refused", description), status)


class LoginProvider(FakeProvider):
    """A fake a person logs in to; see the module docstring. The options are attributes."""

    login_title: ClassVar[str] = "Fake identity provider"
    """The provider's name on the login page."""
    response_types: ClassVar[tuple[str, ...]] = ("code",)
    """``response_type`` values served: ``"code"``, and ``"token"`` for the implicit grant."""
    carried_params: ClassVar[tuple[str, ...]] = ()
    """Provider parameters kept with the request (Hub: ``access_type``); see :class:`Login`."""
    id_tokens: ClassVar[bool] = True
    """Whether ``openid`` in the scope adds an ID token."""

    def __init__(
        self,
        *,
        ttl: float,
        refresh_token_ttl: float | None,
        now: Callable[[], float],
        quirks: WorldQuirks | None,
        redirect_uris: Mapping[str, Iterable[str]] | None,
        public_clients: Iterable[str],
        code_ttl: float,
        require_pkce: bool,
        allow_plain_pkce: bool,
        code_reuse_revokes: bool,
        issuer: str | None,
        **switches: Unpack[QuirkOptions],
    ) -> None:
        super().__init__(
            ttl=ttl, refresh_token_ttl=refresh_token_ttl, now=now, quirks=quirks, **switches
        )
        self.redirect_uris = {k: list(v) for k, v in (redirect_uris or {}).items()}
        """client id → registered redirect URIs; a client not listed gets any loopback URI."""
        self.public_clients = set(public_clients)
        """Client ids without a secret: ``client_id`` in the body and PKCE, nothing else."""
        self.code_ttl = code_ttl
        self.require_pkce = require_pkce
        self.allow_plain_pkce = allow_plain_pkce
        self.code_reuse_revokes = code_reuse_revokes
        self.issuer = issuer
        """``iss`` of ID tokens and discovery; ``None``: the URL the request came to."""
        self.signer = IdTokenSigner()
        self._codes: dict[str, AuthCode] = {}
        self._pkce_families: set[str] = set()

    # -- public surface --------------------------------------------------------------------

    def authorize_requests(self) -> list[RecordedRequest]:
        """Requests to the authorization endpoint(s) (GET form and POST login), oldest first."""
        with self._lock:
            return [e.record for e in self._log if e.target == "authorize"]

    @property
    def issued_codes(self) -> list[str]:
        """Every authorization code issued, in order."""
        with self._lock:
            return list(self._codes)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public key set ID tokens verify against (what the JWKS endpoint serves)."""
        return self.signer.jwks()

    # -- hooks for subclasses ----------------------------------------------------------------

    def _client_known(self, client_id: str) -> bool:
        raise NotImplementedError

    def _user_ok(self, username: str, password: str) -> bool:
        raise NotImplementedError

    def _registered_redirects(self, client_id: str) -> Sequence[str] | None:
        return self.redirect_uris.get(client_id)

    def _login_scope(self, raw: str | None) -> tuple[str, ...] | None:
        """The granted scope of a request's ``scope``; ``None`` refuses it (invalid_scope)."""
        return tuple(dict.fromkeys((raw or "").split()))

    def _response_type_allowed(self, client_id: str, response_type: str) -> bool:
        return True

    def _login_response(self, request: Request, login: Login) -> tuple[Response, str]:
        """The token response for ``login`` and the token family it started."""
        raise NotImplementedError

    def _implicit(self, request: Request, login: Login) -> dict[str, str]:
        """The fragment parameters of an implicit grant (``response_type=token``)."""
        raise NotImplementedError

    def _subject(self, username: str) -> str:
        return username

    def _issuer(self, request: Request) -> str:
        return self.issuer or str(request.base_url).rstrip("/")

    # -- the authorization endpoint (called with the lock held) --------------------------------

    def _authorize(self, request: Request, record: RecordedRequest) -> Response:
        """``GET`` (and ``HEAD``): the login form; ``POST``: the person's answer."""
        answering = request.method == "POST"
        if answering:
            params, repeated = record.form or {}, set()
        else:
            params = record.query
            names = [k for k, _ in request.query_params.multi_items()]
            repeated = {k for k in names if names.count(k) > 1}
        try:
            auth = self._authorization_request(params, repeated)
            if answering:
                return self._answer(request, auth, params)
            return self._login_form(request, auth)
        except _Refusal as refusal:
            if refusal.redirect_uri is None:
                return refused_page(refusal.description)
            answer = {
                "error": refusal.error,
                "error_description": refusal.description,
                "state": refusal.state,
            }
            return redirect_to(refusal.redirect_uri, answer, fragment=refusal.fragment)

    def _login_form(
        self, request: Request, auth: AuthRequest, *, username: str = "", error: str | None = None
    ) -> Response:
        page = login_page(
            provider=self.login_title,
            action=request.url.path,
            hidden=auth.raw,
            client=auth.client_id,
            scope=" ".join(auth.scope),
            username=username,
            error=error,
        )
        return html_response(page, 200 if error is None else 401)

    def _answer(self, request: Request, auth: AuthRequest, form: Mapping[str, str]) -> Response:
        fragment = auth.response_type == "token"
        action = form.get("action")
        if action == "deny":
            denied = {"error": "access_denied", "error_description": "The user denied access"}
            return redirect_to(
                auth.redirect_uri, {**denied, "state": auth.state}, fragment=fragment
            )
        if action != "allow":
            return refused_page("Choose Allow or Deny")
        username = form.get("username", "")
        if not username or not self._user_ok(username, form.get("password", "")):
            return self._login_form(
                request, auth, username=username, error="Wrong username or password"
            )
        extra = {k: auth.raw[k] for k in self.carried_params if k in auth.raw}
        login = Login(auth.client_id, username, auth.scope, self.now(), auth.nonce, extra)
        if fragment:
            params = {**self._implicit(request, login), "state": auth.state}
            return redirect_to(auth.redirect_uri, params, fragment=True)
        code = secrets.token_urlsafe(32)
        self._codes[code] = AuthCode(
            code, auth, username, login.auth_time, self.now() + self.code_ttl
        )
        return redirect_to(auth.redirect_uri, {"code": code, "state": auth.state})

    def _authorization_request(self, params: Mapping[str, str], repeated: set[str]) -> AuthRequest:
        """Validate in the order of RFC 6749 §4.1.2.1: client and redirect URI first (a page),
        then everything else (a redirect with the error)."""
        repeated &= {*AUTHORIZE_PARAMS, *self.carried_params}
        for name in ("client_id", "redirect_uri"):
            if name in repeated:
                raise _Refusal("invalid_request", f"Parameter {name} is repeated")
        client_id = params.get("client_id", "")
        if not client_id:
            raise _Refusal("invalid_request", "Missing client_id")
        if not self._client_known(client_id):
            raise _Refusal("invalid_client", f"Unknown client {client_id}")
        registered = self._registered_redirects(client_id)
        redirect_uri = params.get("redirect_uri", "")
        given = bool(redirect_uri)
        if not given:
            if registered is None or len(registered) != 1:
                raise _Refusal("invalid_request", "Missing redirect_uri")
            redirect_uri = registered[0]
        elif not redirect_allowed(redirect_uri, registered):
            raise _Refusal("invalid_request", "redirect_uri is not registered for this client")
        response_type = params.get("response_type", "")
        state = params.get("state")
        fragment = response_type == "token" and "token" in self.response_types

        def refuse(error: str, description: str) -> NoReturn:
            raise _Refusal(
                error, description, redirect_uri=redirect_uri, state=state, fragment=fragment
            )

        if repeated:
            refuse("invalid_request", f"Parameter {sorted(repeated)[0]} is repeated")
        if not response_type:
            refuse("invalid_request", "Missing response_type")
        if response_type not in self.response_types:
            refuse("unsupported_response_type", f"Unsupported response_type: {response_type}")
        if not self._response_type_allowed(client_id, response_type):
            refuse("unauthorized_client", f"response_type {response_type} is not allowed")
        scope = self._login_scope(params.get("scope"))
        if scope is None:
            refuse("invalid_scope", "Unknown scope")
        challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
        if response_type == "code":
            required = self.require_pkce or client_id in self.public_clients
            error = challenge_problem(
                challenge, method, required=required, allow_plain=self.allow_plain_pkce
            )
            if error is not None:
                refuse("invalid_request", error)
            if challenge:
                method = method or "plain"  # RFC 7636 §4.3
        if "none" in params.get("prompt", "").split():
            # OIDC Core §3.1.2.6: no session here, so a login without a page is impossible.
            refuse("login_required", "prompt=none, but the user is not logged in")
        keep = (*AUTHORIZE_PARAMS, *self.carried_params)
        return AuthRequest(
            client_id=client_id,
            redirect_uri=redirect_uri,
            redirect_uri_given=given,
            response_type=response_type,
            scope=scope,
            state=state,
            code_challenge=challenge or None,
            code_challenge_method=method if challenge else None,
            nonce=params.get("nonce"),
            raw={k: params[k] for k in keep if k in params},
        )

    # -- the token endpoint's authorization_code grant ---------------------------------------

    def _code_grant(self, request: Request, client_id: str, form: Mapping[str, str]) -> Response:
        """Redeem a code (raising :class:`GrantError`) and answer its tokens."""
        grant = self._redeem_code(form, client_id)
        auth = grant.request
        extra = {k: auth.raw[k] for k in self.carried_params if k in auth.raw}
        login = Login(client_id, grant.username, auth.scope, grant.auth_time, auth.nonce, extra)
        response, family = self._login_response(request, login)
        grant.family = family
        if auth.code_challenge is not None:
            self._pkce_families.add(family)
        return response

    def _redeem_code(self, form: Mapping[str, str], client_id: str) -> AuthCode:
        code = form.get("code", "")
        if not code:
            raise GrantError("invalid_request", "Missing code")
        grant = self._codes.get(code)
        if grant is None:
            raise GrantError("invalid_grant", "Authorization code is unknown")
        if grant.used:
            # RFC 6749 §4.1.2: deny, and revoke what was issued from it (when possible).
            if self.code_reuse_revokes and grant.family is not None:
                self._tokens.revoke_family(grant.family)
            raise GrantError("invalid_grant", "Authorization code was already used")
        auth = grant.request
        if auth.client_id != client_id:
            raise GrantError("invalid_grant", "Authorization code was issued to another client")
        if self.now() >= grant.expires_at:
            raise GrantError("invalid_grant", "Authorization code is expired")
        if (auth.redirect_uri_given or "redirect_uri" in form) and form.get(
            "redirect_uri"
        ) != auth.redirect_uri:
            raise GrantError("invalid_grant", "redirect_uri does not match the authorization")
        problem = verifier_problem(
            auth.code_challenge, auth.code_challenge_method, form.get("code_verifier")
        )
        if problem is not None:
            raise GrantError("invalid_grant", problem)
        grant.used = True
        return grant

    # -- ID tokens ------------------------------------------------------------------------------

    def _id_token(self, request: Request, login: Login, access: AccessGrant) -> str | None:
        """An ID token for ``login`` when ``openid`` is in its scope (and the fake has them)."""
        if not self.id_tokens or "openid" not in login.scope:
            return None
        claims = id_token_claims(
            issuer=self._issuer(request),
            subject=self._subject(login.username),
            client_id=login.client_id,
            issued_at=access.issued_at,
            expires_at=access.expires_at,
            auth_time=login.auth_time,
            nonce=login.nonce,
            access_token=access.token,
        )
        return self.signer.sign(claims)

    def _jwks(self, request: Request, record: RecordedRequest) -> Response:
        return json_response(self.signer.jwks(), content_type=self.json_content_type)
