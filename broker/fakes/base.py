"""The machinery every fake shares: request log, canned failures, token store, clock, lock.

A fake's state is read and changed from two threads: the server thread handling requests and
the test thread asserting on counters or revoking tokens. Every access goes through one
re-entrant lock, held for the whole of a request handler so that a request sees a consistent
state; handlers never block, so holding it is cheap.

The "wider world" switches each fake honours are in :mod:`broker.fakes.quirks`.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Any, ClassVar, Literal, Unpack, get_args

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from broker.fakes.quirks import NO_QUIRKS, QuirkOptions, WorldQuirks
from broker.fakes.recording import RecordedRequest, capture
from broker.fakes.tokens import AccessGrant, RefreshGrant, TokenState, TokenStore, new_family
from broker.fakes.wire import JSON, BasicCredentials, json_response, raw_response, read_basic

Target = Literal["token", "api", "authorize", "device"]
"""Which endpoints a canned failure applies to: the token endpoint(s), the protected "me" API,
the authorization endpoint(s) a person's browser visits, or the device authorization endpoint."""

Handler = Callable[[Request, RecordedRequest], Response]
Endpoint = Callable[[Request], Awaitable[Response]]
GrantOf = Callable[[RecordedRequest], "str | None"]


@dataclass(frozen=True)
class _Canned:
    status: int
    body: bytes | str | Mapping[str, Any] | None
    headers: Mapping[str, str] | None


@dataclass(frozen=True)
class _Entry:
    record: RecordedRequest
    target: Target | None
    grant: str | None


def form_grant(record: RecordedRequest) -> str | None:
    """The ``grant_type`` of a form-encoded token request (query string as a fallback)."""
    if record.form is not None and "grant_type" in record.form:
        return record.form["grant_type"]
    return record.query.get("grant_type")


class FakeProvider:
    """Base class of the fakes. Subclasses supply routes, token formats and error bodies."""

    json_content_type: ClassVar[str] = JSON

    # The WorldQuirks switches, one mutable attribute each (documented on WorldQuirks). Handlers
    # read them under the lock; set them all at once through .quirks.
    revoke_previous_access_on_refresh: bool
    reuse_revokes_family: bool
    echo_credentials_in_errors: bool
    basic_form_encoded: bool
    trailing_slash_token_path: bool

    def __init__(
        self,
        *,
        ttl: float,
        refresh_token_ttl: float | None,
        now: Callable[[], float],
        quirks: WorldQuirks | None = None,
        **switches: Unpack[QuirkOptions],
    ) -> None:
        self.ttl = ttl
        """Access-token lifetime in seconds; read at issue time, so tests may change it."""
        self.refresh_token_ttl = refresh_token_ttl
        """Refresh-token lifetime in seconds; ``None`` means they never expire."""
        self.now = now
        """The fake's clock (epoch seconds). Replace it to simulate skew or the passing of time."""
        self._lock = threading.RLock()
        self._log: list[_Entry] = []
        self._failures: dict[Target, deque[_Canned]] = {t: deque() for t in get_args(Target)}
        self._tokens = TokenStore()
        self._app: Starlette | None = None
        self.quirks = replace(quirks or NO_QUIRKS, **switches)

    # -- public surface --------------------------------------------------------------------

    @property
    def quirks(self) -> WorldQuirks:
        """The current switches; assigning a :class:`WorldQuirks` sets them all at once."""
        with self._lock:
            return WorldQuirks(
                revoke_previous_access_on_refresh=self.revoke_previous_access_on_refresh,
                reuse_revokes_family=self.reuse_revokes_family,
                echo_credentials_in_errors=self.echo_credentials_in_errors,
                basic_form_encoded=self.basic_form_encoded,
                trailing_slash_token_path=self.trailing_slash_token_path,
            )

    @quirks.setter
    def quirks(self, value: WorldQuirks) -> None:
        with self._lock:
            self.revoke_previous_access_on_refresh = value.revoke_previous_access_on_refresh
            self.reuse_revokes_family = value.reuse_revokes_family
            self.echo_credentials_in_errors = value.echo_credentials_in_errors
            self.basic_form_encoded = value.basic_form_encoded
            self.trailing_slash_token_path = value.trailing_slash_token_path

    @property
    def app(self) -> Starlette:
        """The ASGI application; serve it with :func:`broker.fakes.server.serve_in_thread`.

        Routes are built on first access, so path options (``token_path``,
        ``trailing_slash_token_path``, ...) must be set before it.
        """
        with self._lock:
            if self._app is None:
                app = Starlette(
                    routes=self._routes(),
                    exception_handlers={HTTPException: self._unrouted},
                )
                # Strict routing: Starlette would answer a missing or extra trailing slash with
                # a 307 to the other spelling, which no provider does; the fake's own JSON 404
                # (recorded) is what a client calling the wrong path should see.
                app.router.redirect_slashes = False
                self._app = app
            return self._app

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return [entry.record for entry in self._log]

    def token_requests(self, grant: str | None = None) -> list[RecordedRequest]:
        """Requests to the token endpoint(s), optionally only those of one grant type."""
        with self._lock:
            return [
                e.record
                for e in self._log
                if e.target == "token" and (grant is None or e.grant == grant)
            ]

    @property
    def issued_access_tokens(self) -> list[str]:
        """Every access token issued, in order."""
        with self._lock:
            return list(self._tokens.access_order)

    @property
    def issued_refresh_tokens(self) -> list[str]:
        """Every refresh token issued (including seeded ones), in order."""
        with self._lock:
            return list(self._tokens.refresh_order)

    def is_access_token_valid(self, token: str) -> bool:
        """True if ``token`` was issued here, is not revoked and has not expired by ``now()``."""
        with self._lock:
            return self._tokens.access_state(token, self.now()) is TokenState.VALID

    def access_token_expires_at(self, token: str) -> float | None:
        """When ``token`` expires on this fake's clock (epoch seconds), or None if unknown."""
        with self._lock:
            grant = self._tokens.access(token)
            return None if grant is None else grant.expires_at

    def is_refresh_token_valid(self, rt: str) -> bool:
        """True if refresh token ``rt`` would be accepted now."""
        with self._lock:
            return self._tokens.refresh_state(rt, self.now()) is TokenState.VALID

    def revoke_refresh_token(self, rt: str) -> None:
        """Kill a refresh token out of band, as an admin or a password change would."""
        with self._lock:
            self._tokens.revoke_refresh(rt)

    def revoke_access_token(self, token: str) -> None:
        """Kill an access token out of band."""
        with self._lock:
            self._tokens.revoke_access(token)

    def fail_next(
        self,
        count: int,
        status: int,
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        target: Target = "token",
    ) -> None:
        """Answer the next ``count`` token-endpoint requests with a canned response.

        ``body`` may be bytes, text or a dict (sent as JSON); ``None`` sends the provider's own
        error body for ``status``. The requests are still recorded. ``target="api"`` applies
        the failures to the protected "me" endpoints instead, ``"authorize"`` to the
        authorization endpoint(s) (login pages), ``"device"`` to the device authorization one.
        """
        with self._lock:
            for _ in range(count):
                self._failures[target].append(_Canned(status, body, headers))

    def recover(self, *, target: Target = "token") -> None:
        """Drop the canned failures not yet sent: the next requests are answered normally."""
        with self._lock:
            self._failures[target].clear()

    # -- for subclasses -------------------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def _default_error_body(self, status: int) -> Mapping[str, Any]:
        """The provider's error body used by :meth:`fail_next` when no body is given."""
        return {"error": "server_error", "error_description": f"Injected failure ({status})"}

    def _http_error_body(self, status: int, message: str) -> Mapping[str, Any]:
        """The provider's body for 404/405 on paths or methods it does not serve."""
        return {"error": message}

    def _with_leak(self, body: dict[str, Any], leak: str) -> dict[str, Any]:
        """``body`` (a token-endpoint error) with ``leak`` appended to its description field."""
        return {**body, "error_description": f"{body.get('error_description', '')}{leak}"}

    async def _unrouted(self, request: Request, exc: Exception) -> Response:
        # Unknown paths and methods are recorded too: a client calling the wrong URL should
        # show up in .requests, not vanish.
        record = await capture(request)
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        headers = exc.headers if isinstance(exc, HTTPException) else None
        message = exc.detail if isinstance(exc, HTTPException) else "Internal Server Error"
        with self._lock:
            self._log.append(_Entry(record, None, None))
        body = self._http_error_body(status, message)
        return raw_response(body, status, json_content_type=self.json_content_type, headers=headers)

    def _mint_access_token(
        self, *, client_id: str, username: str | None, issued_at: float, expires_at: float
    ) -> str:
        return secrets.token_urlsafe(32)

    def _mint_refresh_token(self) -> str:
        return secrets.token_urlsafe(32)

    def _endpoint(
        self, handler: Handler, *, target: Target | None = None, grant_of: GrantOf | None = None
    ) -> Endpoint:
        """Wrap ``handler``: record the request, apply canned failures, hold the lock."""

        async def endpoint(request: Request) -> Response:
            record = await capture(request)
            raw_body = await request.body()  # cached by Starlette: capture() read it already
            with self._lock:
                grant = grant_of(record) if grant_of is not None else None
                self._log.append(_Entry(record, target, grant))
                own_body = True
                if target is not None and self._failures[target]:
                    canned = self._failures[target].popleft()
                    own_body = canned.body is None
                    response = self._canned(canned)
                else:
                    response = handler(request, record)
                if target == "token" and own_body and self.echo_credentials_in_errors:
                    response = self._echo_credentials(response, record, raw_body)
                # Real servers send Date from their own clock; a skewed fake must too,
                # so clients can measure the skew (the server runs with date_header off).
                response.headers.setdefault("date", formatdate(self.now(), usegmt=True))
                return response

        return endpoint

    def _echo_credentials(
        self, response: Response, record: RecordedRequest, raw_body: bytes
    ) -> Response:
        """A careless server's error: the request's credentials quoted in the description.

        Done here, on the rendered answer, rather than in each error helper, so that every
        error path of every token endpoint leaks, including canned ``fail_next`` ones.
        """
        if response.status_code < 400:
            return response
        try:
            body = json.loads(bytes(response.body))
        except ValueError:
            return response
        if not isinstance(body, dict):
            return response
        authorization = record.headers.get("authorization", "(none)")
        leak = (
            f" [request Authorization: {authorization}]"
            f" [request body: {raw_body.decode('utf-8', 'replace')}]"
        )
        headers = {k: v for k, v in response.headers.items() if k != "content-length"}
        content_type = headers.pop("content-type", self.json_content_type)
        return json_response(
            self._with_leak(body, leak),
            response.status_code,
            content_type=content_type,
            headers=headers,
        )

    def _canned(self, canned: _Canned) -> Response:
        body = canned.body if canned.body is not None else self._default_error_body(canned.status)
        return raw_response(
            body, canned.status, json_content_type=self.json_content_type, headers=canned.headers
        )

    def _issue_access(
        self,
        *,
        client_id: str,
        username: str | None,
        scope: tuple[str, ...] = (),
        tenant: str | None = None,
        family: str | None = None,
    ) -> AccessGrant:
        """Issue an access token; ``family=None`` means a new login (a new token family)."""
        issued_at = self.now()
        expires_at = issued_at + self.ttl
        token = self._mint_access_token(
            client_id=client_id, username=username, issued_at=issued_at, expires_at=expires_at
        )
        return self._tokens.add_access(
            AccessGrant(
                token,
                client_id,
                username,
                scope,
                issued_at,
                expires_at,
                tenant,
                family=family or new_family(),
            )
        )

    def _issue_refresh(
        self,
        *,
        client_id: str,
        username: str,
        scope: tuple[str, ...] = (),
        tenant: str | None = None,
        family: str | None = None,
    ) -> RefreshGrant:
        """Issue a refresh token; ``family=None`` means a new login (a new token family)."""
        issued_at = self.now()
        ttl = self.refresh_token_ttl
        expires_at = None if ttl is None else issued_at + ttl
        return self._tokens.add_refresh(
            RefreshGrant(
                self._mint_refresh_token(),
                client_id,
                username,
                scope,
                issued_at,
                expires_at,
                tenant,
                family=family or new_family(),
            )
        )

    def _basic_client(
        self, authorization: str | None, accepts: Callable[[BasicCredentials], bool]
    ) -> BasicCredentials | None:
        """Basic client credentials, read strictly per §2.3.1 when ``basic_form_encoded``."""
        return read_basic(authorization, strict=self.basic_form_encoded, accepts=accepts)

    # -- refresh grants: the family rules live here, the fakes call them -------------------

    def _detect_reuse(self, token: str) -> None:
        """Reuse detection: a rotated-away refresh token presented again kills its family.

        Called before the fake classifies ``token``, so the fake then answers its usual
        error for a revoked token (RFC 9700 §4.14.2 wants the reuse refused, not explained).
        """
        grant = self._tokens.refresh(token)
        if self.reuse_revokes_family and grant is not None and grant.rotated_to is not None:
            self._tokens.revoke_family(grant.family)

    def _refresh_access(
        self,
        old: RefreshGrant,
        *,
        client_id: str,
        scope: tuple[str, ...] = (),
        tenant: str | None = None,
    ) -> AccessGrant:
        """The access token a refresh grant with ``old`` issues, in ``old``'s family.

        With ``revoke_previous_access_on_refresh`` the family's earlier access tokens die now.
        """
        access = self._issue_access(
            client_id=client_id,
            username=old.username,
            scope=scope,
            tenant=tenant,
            family=old.family,
        )
        if self.revoke_previous_access_on_refresh:
            self._tokens.revoke_family_access(old.family, keep=access.token)
        return access

    def _rotate(
        self, old: RefreshGrant, *, revoke_old: bool, client_id: str | None = None
    ) -> RefreshGrant:
        """Replace ``old`` by a new refresh token of the same family (and owner and scope).

        ``old`` is marked as rotated away, which is what reuse detection looks for, whether or
        not it is also revoked (``revoke_old``, each fake's own rotation option).
        """
        new = self._issue_refresh(
            client_id=client_id or old.client_id,
            username=old.username,
            scope=old.scope,
            tenant=old.tenant,
            family=old.family,
        )
        old.rotated_to = new.token
        if revoke_old:
            old.revoked = True
        return new

    def _seed(
        self,
        *,
        client_id: str,
        username: str,
        scope: tuple[str, ...] = (),
        tenant: str | None = None,
    ) -> str:
        with self._lock:
            return self._issue_refresh(
                client_id=client_id, username=username, scope=scope, tenant=tenant
            ).token
