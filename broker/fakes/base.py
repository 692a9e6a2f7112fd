"""The machinery every fake shares: request log, canned failures, token store, clock, lock.

A fake's state is read and changed from two threads: the server thread handling requests and
the test thread asserting on counters or revoking tokens. Every access goes through one
re-entrant lock, held for the whole of a request handler so that a request sees a consistent
state; handlers never block, so holding it is cheap.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, ClassVar, Literal

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from broker.fakes.recording import RecordedRequest, capture
from broker.fakes.tokens import AccessGrant, RefreshGrant, TokenState, TokenStore
from broker.fakes.wire import JSON, raw_response

Target = Literal["token", "api"]
"""Which endpoints a canned failure applies to: the token endpoint(s) or the protected "me" API."""

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

    def __init__(
        self,
        *,
        ttl: float,
        refresh_token_ttl: float | None,
        now: Callable[[], float],
    ) -> None:
        self.ttl = ttl
        """Access-token lifetime in seconds; read at issue time, so tests may change it."""
        self.refresh_token_ttl = refresh_token_ttl
        """Refresh-token lifetime in seconds; ``None`` means they never expire."""
        self.now = now
        """The fake's clock (epoch seconds). Replace it to simulate skew or the passing of time."""
        self._lock = threading.RLock()
        self._log: list[_Entry] = []
        self._failures: dict[Target, deque[_Canned]] = {"token": deque(), "api": deque()}
        self._tokens = TokenStore()
        self._app: Starlette | None = None

    # -- public surface --------------------------------------------------------------------

    @property
    def app(self) -> Starlette:
        """The ASGI application; serve it with :func:`broker.fakes.server.serve_in_thread`."""
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
        the failures to the protected "me" endpoints instead.
        """
        with self._lock:
            for _ in range(count):
                self._failures[target].append(_Canned(status, body, headers))

    # -- for subclasses -------------------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def _default_error_body(self, status: int) -> Mapping[str, Any]:
        """The provider's error body used by :meth:`fail_next` when no body is given."""
        return {"error": "server_error", "error_description": f"Injected failure ({status})"}

    def _http_error_body(self, status: int, message: str) -> Mapping[str, Any]:
        """The provider's body for 404/405 on paths or methods it does not serve."""
        return {"error": message}

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
            with self._lock:
                grant = grant_of(record) if grant_of is not None else None
                self._log.append(_Entry(record, target, grant))
                if target is not None and self._failures[target]:
                    response = self._canned(self._failures[target].popleft())
                else:
                    response = handler(request, record)
                # Real servers send Date from their own clock; a skewed fake must too,
                # so clients can measure the skew (the server runs with date_header off).
                response.headers.setdefault("date", formatdate(self.now(), usegmt=True))
                return response

        return endpoint

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
    ) -> AccessGrant:
        issued_at = self.now()
        expires_at = issued_at + self.ttl
        token = self._mint_access_token(
            client_id=client_id, username=username, issued_at=issued_at, expires_at=expires_at
        )
        return self._tokens.add_access(
            AccessGrant(token, client_id, username, scope, issued_at, expires_at, tenant)
        )

    def _issue_refresh(
        self,
        *,
        client_id: str,
        username: str,
        scope: tuple[str, ...] = (),
        tenant: str | None = None,
    ) -> RefreshGrant:
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
            )
        )

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
