"""What every provider protocol offers, and the parsing and error rules they share.

A protocol builds ``httpx.Request`` objects and turns ``httpx.Response``
objects into a :class:`~broker.core.tokens.Grant` or a
:class:`~broker.core.errors.TokenEndpointError`. It never does I/O, so each one is
tested with plain values; :mod:`broker.engine.manager` is the only place that sends.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, quote_plus

import httpx

from broker.core.clock import parse_http_date
from broker.core.errors import FailureCode, FailureKind, TokenEndpointError
from broker.core.redact import Redactor
from broker.core.sanitize import one_line, shortened
from broker.core.tokens import Grant

MAX_ERROR_TEXT = 200
"""How much of an identity provider's error text is kept for logs and the status API."""

SECRET_FIELDS = ("client_secret", "password", "refresh_token")
"""Request body fields whose values are secrets."""

# RFC 6749 §5.2 codes that mean "these credentials or this grant will not work".
PERMANENT_OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
    }
)
# Statuses that say no token endpoint lives at the URL, whatever the body says.
MISCONFIGURED_STATUSES = frozenset({404, 405})
# Codes an authorization server uses when the problem is on its side (RFC 6749 §4.1.2.1).
TRANSIENT_OAUTH_ERRORS = frozenset({"server_error", "temporarily_unavailable", "slow_down"})


class TokenProtocol(ABC):
    """One provider's way of getting and refreshing tokens."""

    @property
    def can_login(self) -> bool:
        """False when the provider lives on a refresh token alone (nothing to fall back to)."""
        return True

    @abstractmethod
    def login_request(self) -> httpx.Request:
        """The primary grant: password, client credentials, HIRO /app login."""

    @abstractmethod
    def refresh_request(self, refresh_token: str) -> httpx.Request:
        """Exchange *refresh_token* for a new access token."""

    @abstractmethod
    def parse_response(
        self, response: httpx.Response, body: bytes, *, wall_now: float, refreshing: bool
    ) -> Grant:
        """Read a token response into a Grant, or raise TokenEndpointError.

        *body* is the (size-capped) response body; *refreshing* says whether
        the request was a refresh.
        """

    @abstractmethod
    def describe(self) -> str:
        """One line saying what this provider will do, for ``broker check``."""

    @abstractmethod
    def secret_values(self) -> Iterable[str]:
        """Every secret this protocol sends, so error texts and logs can be scrubbed of them.

        The client id is not secret, but Basic credentials combine it with the secret:
        those are listed as sent (see :func:`basic_credentials`).
        """

    def redactor(self, sent: httpx.Request | None = None) -> Redactor:
        """Finds this protocol's secrets, and those *sent* carried (a refresh token)."""
        return Redactor([*self.secret_values(), *secrets_sent(sent)])

    def scrub(self, text: str, *, sent: httpx.Request | None = None) -> str:
        """*text* from the identity provider, as :func:`shown` makes it."""
        return shown(text, self.redactor(sent))


def shown(text: str, redactor: Redactor, limit: int = MAX_ERROR_TEXT) -> str:
    """An identity provider's *text* as the broker shows it: secrets redacted, one
    printable line, at most *limit* characters (then "...").

    Redacted before anything changes it (a secret with a tab or two spaces in it is
    matched as it was sent), again after making it one line (turning controls into
    spaces and collapsing whitespace can join the pieces of a secret), and only then
    shortened: cutting first could leave a piece of a secret too short to be recognised.
    """
    return shortened(redactor.redact(one_line(redactor.redact(text))), limit)


def basic_auth(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode both parts, then Base64 ``id:secret``."""
    return "Basic " + basic_credentials(client_id, client_secret)[0]


def basic_credentials(client_id: str, client_secret: str) -> tuple[str, str]:
    """The Base64 of ``id:secret`` as RFC 6749 §2.3.1 sends it (both parts form-encoded),
    and as RFC 7617 alone would (verbatim), for redacting either."""
    encoded = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    verbatim = f"{client_id}:{client_secret}"
    return (
        base64.b64encode(encoded.encode()).decode("ascii"),
        base64.b64encode(verbatim.encode()).decode("ascii"),
    )


def secrets_sent(request: httpx.Request | None) -> list[str]:
    """The secrets *request* carried: its ``Authorization`` credentials and the values
    of :data:`SECRET_FIELDS` in its form or JSON body (the refresh token of a refresh)."""
    if request is None:
        return []
    found: list[str] = []
    credentials = request.headers.get("authorization", "").partition(" ")[2].strip()
    if credentials:
        found.append(credentials)
    try:
        body = request.content
    except httpx.RequestNotRead:  # a streamed body: the protocols never send one
        return found
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        fields = parse_qs(body.decode("utf-8", "replace"))
        found.extend(value for key in SECRET_FIELDS for value in fields.get(key, ()))
    elif "json" in content_type:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return found
        if isinstance(data, dict):
            found.extend(v for key in SECRET_FIELDS if isinstance(v := data.get(key), str))
    return found


def request_of(response: httpx.Response) -> httpx.Request | None:
    """The request *response* answers, if it knows (a response built in a test may not)."""
    try:
        return response.request
    except RuntimeError:
        return None


def parse_json_object(body: bytes, status: int) -> dict[str, Any]:
    """The body as a JSON object, or a transient ``invalid_response`` error."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        what = "an empty body" if not body.strip() else "a body that is not a JSON object"
        msg = f"token endpoint answered HTTP {status} with {what}"
        raise TokenEndpointError(
            msg, code=FailureCode.INVALID_RESPONSE, kind=FailureKind.TRANSIENT, status=status
        )
    return data


def parse_lifetime(value: Any) -> float | None:
    """``expires_in`` as seconds; providers send numbers or numeric strings ("3600")."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return float(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return float(value)
    msg = f"expires_in is not a non-negative number: {type(value).__name__}"
    raise TokenEndpointError(
        msg, code=FailureCode.INVALID_RESPONSE, kind=FailureKind.TRANSIENT, status=200
    )


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT-shaped token (Unix seconds), unverified, or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp)
    return None


def retry_after_seconds(headers: httpx.Headers, wall_now: float) -> float | None:
    """The ``Retry-After`` header as seconds from now (delta or HTTP date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = parse_http_date(value)
    return None if when is None else max(0.0, when - wall_now)


def classify_http_error(
    *,
    status: int,
    error_code: str | None,
    refreshing: bool,
    refresh_rejected_statuses: frozenset[int] = frozenset(),
) -> tuple[FailureKind, bool]:
    """Decide how a failed token response is treated.

    Returns ``(kind, refresh_token_rejected)``. Pure; table-tested.

    * 429, 408 and 5xx, or an OAuth ``server_error``/``temporarily_unavailable``,
      are transient: retry with backoff.
    * ``invalid_grant`` on a refresh (or a status the provider uses for a dead
      refresh token, like HIRO's 401) means the refresh token is dead: fall back
      to the primary grant.
    * Any other 4xx is a rejection of our credentials or request.
    * 404 and 405 (nothing answers token requests at that URL) and any 3xx (a
      token endpoint never redirects; we do not follow) mean the URL is wrong:
      a configuration error, whatever the body says.
    """
    if error_code in TRANSIENT_OAUTH_ERRORS or status in (408, 425, 429) or status >= 500:
        return FailureKind.TRANSIENT, False
    if status in MISCONFIGURED_STATUSES or 300 <= status < 400:
        return FailureKind.MISCONFIGURED, False
    if refreshing and (error_code == "invalid_grant" or status in refresh_rejected_statuses):
        return FailureKind.REJECTED, True
    if 400 <= status < 500:
        return FailureKind.REJECTED, False
    # 1xx/3xx: a redirect or something odd where a token belonged.
    return FailureKind.TRANSIENT, False


def error_fields(data: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """``(error_code, description)`` from the error bodies the providers use.

    RFC 6749 ``{error, error_description}``; Aerion's wrapped
    ``{error, status, summary, raw}``; HIRO's ``{error: {message, code}}``
    and ``{error: "message"}``.
    """
    if not data:
        return None, None
    error = data.get("error")
    description = data.get("error_description") or data.get("raw") or data.get("message")
    if isinstance(error, dict):
        message = error.get("message")
        return None, str(message) if message is not None else None
    if isinstance(error, str):
        # A code is a short token like invalid_grant; anything else is a message.
        if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", error):
            return error, str(description) if description is not None else None
        return None, error
    return None, str(description) if description is not None else None


def token_endpoint_error(
    protocol: TokenProtocol,
    status: int,
    headers: httpx.Headers,
    body: bytes,
    *,
    wall_now: float,
    refreshing: bool,
    refresh_rejected_statuses: frozenset[int] = frozenset(),
    sent: httpx.Request | None = None,
) -> TokenEndpointError:
    """Build the error for a token response that carries an error (usually non-2xx).

    *sent* is the request answered: whatever secret it carried is redacted from the
    identity provider's text too, as are the protocol's own.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    code, description = error_fields(data if isinstance(data, dict) else None)
    redactor = protocol.redactor(sent)
    if code is not None and redactor.finds(code):
        # A code shaped like a token may be one echoed back; it would become a metric
        # label and a log field. None of the codes the broker acts on is a secret.
        code = None
    kind, rt_rejected = classify_http_error(
        status=status,
        error_code=code,
        refreshing=refreshing,
        refresh_rejected_statuses=refresh_rejected_statuses,
    )
    stable_code = code if code is not None else f"http_{status}"
    what = "refresh" if refreshing else "login"
    detail = f": {shown(description, redactor)}" if description else ""
    if description is None and data is None and body.strip():
        detail = " (body is not JSON)"
    if kind is FailureKind.MISCONFIGURED:
        stable_code, detail = _misconfigured(redactor, status, headers)
    msg = f"{what} failed: token endpoint answered HTTP {status} {stable_code}{detail}"
    return TokenEndpointError(
        msg,
        code=stable_code,
        kind=kind,
        status=status,
        refresh_token_rejected=rt_rejected,
        retry_after=retry_after_seconds(headers, wall_now),
    )


def _misconfigured(redactor: Redactor, status: int, headers: httpx.Headers) -> tuple[str, str]:
    """The code and explanation for a token URL that is not a token endpoint."""
    if 300 <= status < 400:
        location = headers.get("location", "")
        # Scheme, host and path say what went wrong (http -> https, a login page);
        # a query string could carry anything, so it is left out.
        target = location.split("?", 1)[0].split("#", 1)[0]
        where = f" to {shown(target, redactor)}" if target else ""
        return (
            FailureCode.UNEXPECTED_REDIRECT,
            f": redirected{where}; token requests are never redirected: configure the final URL",
        )
    return (
        FailureCode.ENDPOINT_NOT_FOUND,
        ": no token endpoint at this URL (check the url, token_url or auth_api, including"
        " any trailing slash)",
    )
