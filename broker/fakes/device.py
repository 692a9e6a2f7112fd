"""The OAuth 2.0 device authorization grant (RFC 8628) for a :class:`LoginProvider`.

- ``POST <device_authorization>`` (client authentication as at the token endpoint; ``scope``)
  → ``{device_code, user_code, verification_uri, verification_uri_complete, expires_in,
  interval}``. User codes are 8 letters of RFC 8628 §6.1's consonant alphabet, shown
  ``BCDF-GHJK``; what a person types is read case-insensitively, dashes and spaces ignored.
- ``GET <verification_path>`` (``?user_code=`` prefills it) is the form; ``POST`` it with
  ``action=approve`` (and the person's credentials) or ``action=deny``.
- Token endpoint ``grant_type=urn:ietf:params:oauth:grant-type:device_code``:
  ``authorization_pending`` until approved; ``slow_down`` when polled sooner than the
  interval after the previous poll, which also adds 5 s to the interval (§3.5);
  ``expired_token`` once ``expires_in`` is over; ``access_denied`` after Deny; the tokens,
  once, after approval (then ``invalid_grant``).

Tests act as the person with :meth:`DeviceProvider.approve_device` or over HTTP.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from broker.fakes.authorize import GrantError, Login, LoginProvider
from broker.fakes.pages import device_page, html_response, message_page
from broker.fakes.recording import RecordedRequest
from broker.fakes.wire import json_response

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
"""RFC 8628 §6.1: no vowels (no words), no look-alikes."""
SLOW_DOWN_STEP = 5
"""Seconds added to a device code's polling interval on every ``slow_down`` (§3.5)."""

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

DeviceStatus = Literal["pending", "approved", "denied", "used"]


@dataclass
class DeviceGrant:
    """One device authorization; ``interval`` grows with every ``slow_down``."""

    device_code: str
    user_code: str
    client_id: str
    scope: tuple[str, ...]
    expires_at: float
    interval: int
    status: DeviceStatus = "pending"
    username: str | None = None
    approved_at: float | None = None
    last_poll: float | None = None


def normalise_user_code(raw: str) -> str:
    """A typed user code as issued: upper case, letters only, ``XXXX-XXXX``."""
    letters = "".join(c for c in raw.upper() if c.isascii() and c.isalpha())
    return f"{letters[:4]}-{letters[4:]}" if len(letters) == 8 else letters


class DeviceProvider(LoginProvider):
    """A :class:`LoginProvider` that also serves the device authorization grant."""

    verification_path: ClassVar[str] = "/device"

    def __init__(self, *, device_code_ttl: float, device_interval: int, **options: Any) -> None:
        super().__init__(**options)
        self.device_code_ttl = device_code_ttl
        """Lifetime of a device code in seconds (``expires_in``), read when one is issued."""
        self.device_interval = device_interval
        """The polling interval a device code starts with (``interval``)."""
        self._devices: dict[str, DeviceGrant] = {}
        self._user_codes: dict[str, str] = {}

    # -- public surface --------------------------------------------------------------------

    def approve_device(self, user_code: str, username: str) -> None:
        """Approve a pending device authorization as ``username``, as the form would."""
        with self._lock:
            grant = self._pending(user_code)
            if grant is None:
                raise KeyError(f"no pending device authorization for {user_code!r}")
            grant.status, grant.username, grant.approved_at = "approved", username, self.now()

    def deny_device(self, user_code: str) -> None:
        """Deny a pending device authorization, as the form's Deny button would."""
        with self._lock:
            grant = self._pending(user_code)
            if grant is None:
                raise KeyError(f"no pending device authorization for {user_code!r}")
            grant.status = "denied"

    def device_requests(self) -> list[RecordedRequest]:
        """Requests to the device authorization endpoint, oldest first."""
        with self._lock:
            return [e.record for e in self._log if e.target == "device"]

    # -- hooks for subclasses ----------------------------------------------------------------

    def _authenticate_client(self, record: RecordedRequest, form: dict[str, str]) -> str:
        """The authenticated client of a request (as at the token endpoint), or GrantError."""
        raise NotImplementedError

    def _grant_error(self, err: GrantError) -> Response:
        raise NotImplementedError

    # -- handlers (called with the lock held) ----------------------------------------------

    def _pending(self, user_code: str) -> DeviceGrant | None:
        grant = self._devices.get(self._user_codes.get(normalise_user_code(user_code), ""))
        if grant is None or grant.status != "pending" or self.now() >= grant.expires_at:
            return None
        return grant

    def _new_user_code(self) -> str:
        while True:
            letters = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
            code = f"{letters[:4]}-{letters[4:]}"
            if code not in self._user_codes:
                return code

    def _device_authorization(self, request: Request, record: RecordedRequest) -> Response:
        form = record.form
        if form is None and record.headers.get("content-length", "0") == "0":
            form = {}  # every parameter is optional here: an empty POST is a valid request
        try:
            if form is None:
                raise GrantError(
                    "invalid_request", "Body must be application/x-www-form-urlencoded"
                )
            client_id = self._authenticate_client(record, form)
            scope = self._login_scope(form.get("scope"))
            if scope is None:
                raise GrantError("invalid_scope", "Unknown scope")
        except GrantError as err:
            return self._grant_error(err)
        grant = DeviceGrant(
            device_code=secrets.token_urlsafe(32),
            user_code=self._new_user_code(),
            client_id=client_id,
            scope=scope,
            expires_at=self.now() + self.device_code_ttl,
            interval=self.device_interval,
        )
        self._devices[grant.device_code] = grant
        self._user_codes[grant.user_code] = grant.device_code
        uri = str(request.base_url).rstrip("/") + self.verification_path
        body = {
            "device_code": grant.device_code,
            "user_code": grant.user_code,
            "verification_uri": uri,
            "verification_uri_complete": f"{uri}?{urlencode({'user_code': grant.user_code})}",
            "expires_in": int(self.device_code_ttl),
            "interval": grant.interval,
        }
        return json_response(body, content_type=self.json_content_type, headers=_NO_STORE)

    def _device_form(
        self, user_code: str, *, username: str = "", error: str | None = None, status: int = 200
    ) -> Response:
        page = device_page(
            provider=self.login_title,
            action=self.verification_path,
            user_code=user_code,
            username=username,
            error=error,
        )
        return html_response(page, status)

    def _verification(self, request: Request, record: RecordedRequest) -> Response:
        """``GET``: the form (``?user_code=`` prefills it); ``POST``: approve or deny."""
        if request.method != "POST":  # GET, and HEAD (Starlette routes it with GET)
            return self._device_form(record.query.get("user_code", ""))
        form = record.form or {}
        typed = form.get("user_code", "")
        grant = self._pending(typed)
        if grant is None:
            return self._device_form(typed, error="Unknown or expired code", status=400)
        action = form.get("action")
        if action == "deny":
            grant.status = "denied"
            return html_response(message_page("Access denied", "The device was not connected."))
        if action != "approve":
            return self._device_form(typed, error="Choose Approve or Deny", status=400)
        username = form.get("username", "")
        if not username or not self._user_ok(username, form.get("password", "")):
            return self._device_form(
                typed, username=username, error="Wrong username or password", status=401
            )
        grant.status, grant.username, grant.approved_at = "approved", username, self.now()
        return html_response(message_page("Device connected", "You may close this page."))

    def _device_grant(self, request: Request, client_id: str, form: Mapping[str, str]) -> Response:
        """The token endpoint's device_code grant; raises GrantError until there are tokens."""
        device_code = form.get("device_code", "")
        if not device_code:
            raise GrantError("invalid_request", "Missing device_code")
        grant = self._devices.get(device_code)
        if grant is None:
            raise GrantError("invalid_grant", "Device code is unknown")
        if grant.client_id != client_id:
            raise GrantError("invalid_grant", "Device code was issued to another client")
        now = self.now()
        previous, grant.last_poll = grant.last_poll, now
        if grant.status == "used":
            raise GrantError("invalid_grant", "Device code was already used")
        if grant.status == "denied":
            raise GrantError("access_denied", "The user denied the authorization")
        if now >= grant.expires_at:
            raise GrantError("expired_token", "Device code is expired")
        if grant.status == "pending":
            if previous is not None and now - previous < grant.interval:
                grant.interval += SLOW_DOWN_STEP
                raise GrantError("slow_down", f"Poll at most every {grant.interval} s")
            raise GrantError("authorization_pending", "The user has not answered yet")
        grant.status = "used"
        login = Login(client_id, grant.username or "", grant.scope, grant.approved_at or now)
        return self._login_response(request, login)[0]
