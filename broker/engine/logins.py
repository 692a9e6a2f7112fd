"""A person's logins in progress: each one's secrets, its one-time link and its outcome.

``broker login <provider>`` asks the broker for a login (:meth:`Logins.begin`) and gets a
one-time link to the broker itself, ``/login/start/<id>``. Opening it (once: :meth:`open`)
sends the browser to the identity provider with the login's ``state`` and PKCE challenge,
and binds the login to that browser with a cookie. The identity provider sends the browser
back to ``/login/callback`` with the ``state``: :meth:`take` finds the login by it, once,
and only with the cookie (or, for ``--no-browser``, the login's id, which only the CLI
holds). No other page can start a login or complete one (login CSRF): the link and the
state are random, single use, and expire with the login after :data:`LOGIN_TTL`.

Logins live in this broker's memory: a restart forgets them (run ``broker login`` again).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from broker.core.clock import Clock
from broker.core.errors import ErrorCode, LoginError
from broker.protocols.authorize import LoginSecrets

LOGIN_TTL = 600.0
"""Seconds a login may take from ``broker login`` to the callback."""

MAX_PENDING = 64
"""Logins in progress at once; the oldest is dropped beyond (a caller with the login
right could otherwise fill memory)."""

Outcome = Literal["pending", "ready", "failed"]


@dataclass(eq=False)
class LoginAttempt:
    """One login in progress (or just finished)."""

    id: str = field(repr=False)
    """The handle the CLI holds: the one-time link's path and the way to wait or paste."""
    provider: str
    secrets: LoginSecrets = field(repr=False)
    redirect_uri: str
    authorize_url: str = field(repr=False)
    """Where the one-time link sends the browser (carries the state and challenge)."""
    expires_at: float
    opened: bool = False
    browser: str | None = field(default=None, repr=False)
    """The cookie that binds the login to the browser that opened its link."""
    taken: bool = False
    outcome: Outcome = "pending"
    message: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def finish(self, outcome: Outcome, message: str) -> None:
        self.outcome = outcome
        self.message = message
        self.done.set()


class Logins:
    """The logins in progress, by id and by state."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._by_id: dict[str, LoginAttempt] = {}

    def begin(
        self, provider: str, login: LoginSecrets, *, redirect_uri: str, authorize_url: str
    ) -> LoginAttempt:
        self._prune()
        while len(self._by_id) >= MAX_PENDING:
            oldest = next(iter(self._by_id))
            self._by_id.pop(oldest).finish("failed", "replaced by newer logins")
        attempt = LoginAttempt(
            id=secrets.token_urlsafe(24),
            provider=provider,
            secrets=login,
            redirect_uri=redirect_uri,
            authorize_url=authorize_url,
            expires_at=self._clock.monotonic() + LOGIN_TTL,
        )
        self._by_id[attempt.id] = attempt
        return attempt

    def get(self, login_id: str) -> LoginAttempt:
        """The login *login_id*, finished or not; LoginError when there is none."""
        attempt = self._find(login_id)
        if attempt is None:
            raise LoginError("no such login (it may have expired)", code=ErrorCode.LOGIN_NOT_FOUND)
        return attempt

    def open(self, login_id: str) -> tuple[LoginAttempt, str]:
        """The login whose one-time link was just opened, and the cookie value that binds
        it to this browser; LoginError when the link is unknown, expired or used."""
        attempt = self._live(self._find(login_id))
        if attempt.opened:
            msg = "this login link was already used: run broker login again"
            raise LoginError(msg, code=ErrorCode.LOGIN_EXPIRED)
        attempt.opened = True
        attempt.browser = secrets.token_urlsafe(24)
        return attempt, attempt.browser

    def take(
        self, state: str | None, *, browser: str | None = None, login_id: str | None = None
    ) -> LoginAttempt:
        """The login the identity provider's redirect (*state*) completes, once: with the
        *browser* cookie its link set, or its *login_id* (a URL pasted into the CLI)."""
        if not state:
            raise LoginError("the redirect carries no state", code=ErrorCode.LOGIN_NOT_FOUND)
        match = None
        for attempt in self._by_id.values():
            if hmac.compare_digest(attempt.secrets.state.encode(), state.encode()):
                match = attempt
        attempt = self._live(match)
        bound = (
            login_id is not None and hmac.compare_digest(attempt.id.encode(), login_id.encode())
        ) or (
            browser is not None
            and attempt.browser is not None
            and hmac.compare_digest(attempt.browser.encode(), browser.encode())
        )
        if not bound:
            # A redirect that reached a browser the login was not started in: someone
            # else's login, or a forged callback.
            msg = "this login was started in another browser: open the link broker login printed"
            raise LoginError(msg, code=ErrorCode.LOGIN_NOT_FOUND)
        if attempt.taken:
            msg = "this login was already completed: run broker login again"
            raise LoginError(msg, code=ErrorCode.LOGIN_EXPIRED)
        attempt.taken = True
        return attempt

    def take_by_browser(self, bindings: Iterable[str]) -> LoginAttempt:
        """The login the browser with one of these cookies opened, once: HIRO's UI flow
        comes back with no state, so the cookie its link set is all that binds it."""
        match = None
        for attempt in self._by_id.values():
            if attempt.browser is None or attempt.taken:
                continue
            for binding in bindings:
                if hmac.compare_digest(attempt.browser.encode(), binding.encode()):
                    match = attempt
        attempt = self._live(match)
        attempt.taken = True
        return attempt

    def _find(self, login_id: str) -> LoginAttempt | None:
        self._prune()
        for key, attempt in self._by_id.items():
            if hmac.compare_digest(key.encode(), login_id.encode()):
                return attempt
        return None

    def _live(self, attempt: LoginAttempt | None) -> LoginAttempt:
        if attempt is None:
            raise LoginError("no such login (it may have expired)", code=ErrorCode.LOGIN_NOT_FOUND)
        if attempt.outcome != "pending" or self._clock.monotonic() >= attempt.expires_at:
            msg = "this login has ended: run broker login again"
            raise LoginError(msg, code=ErrorCode.LOGIN_EXPIRED)
        return attempt

    def _prune(self) -> None:
        """Forget logins over twice their life: long enough for the CLI to read the end."""
        now = self._clock.monotonic()
        for key in [k for k, a in self._by_id.items() if now >= a.expires_at + LOGIN_TTL]:
            attempt = self._by_id.pop(key)
            if attempt.outcome == "pending":
                attempt.finish("failed", "the login expired")
