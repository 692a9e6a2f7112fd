"""The broker's exceptions.

::

    BrokerError
     ├─ ConfigError              bad YAML, env or secret file at start → exit non-zero
     ├─ ApiError                 the HTTP API answers it: {"error": code, "message": ...}
     │   ├─ UnknownProviderError   no such provider → HTTP 404
     │   ├─ TokenUnavailableError  no fitting token now → HTTP 503 (422, 429) + Retry-After
     │   ├─ LoginError             a person's login cannot go on → HTTP 404, 409, 410, 502
     │   └─ Denied                 (broker.web.security) a request refused → 401, 403, 412, 431
     ├─ TokenEndpointError       the identity provider said no, or answered garbage
     ├─ DeviceAnswerError        (broker.protocols.device) a device authorization answer unusable
     ├─ Unreachable              (broker.light_cli) the broker did not answer a probe
     ├─ StateError               (broker.engine.state_file) the state directory cannot be used
     ├─ StoreError               (broker.engine.store) a token store could not do what was asked
     ├─ SinkError                (broker.ops.sinks) a sink file cannot be written
     ├─ UnixSocketError          (broker.server.unixsocket) the Unix socket cannot be made
     └─ ListenError              (broker.server.listeners) an address cannot be listened on

The subclasses defined elsewhere import :class:`BrokerError` from here, never the
other way round: this module imports nothing of the broker's.

The codes the API answers with are :class:`ErrorCode`, each with its status in
:data:`STATUS`, the one table of error statuses; ``http_<status>`` names any other
refusal of the HTTP layer (:func:`http_layer_code`).

Messages never contain a secret or a token: they name the provider, the HTTP
status and the identity provider's error code, and quote at most a short,
scrubbed piece of its error body.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final


class ErrorCode(enum.StrEnum):
    """The ``error`` codes of the broker's own error answers (README, "HTTP API").

    Not the codes of failed token requests: those are the identity provider's
    (``invalid_grant``, ``http_<status>``) or the broker's :class:`FailureCode`, shown
    in ``/providers`` and ``X-Broker-Refresh-Failed``.
    """

    # No token for the caller (broker.engine.manager, broker.web.error_handlers).
    UNKNOWN_PROVIDER = "unknown_provider"
    TOKEN_UNAVAILABLE = "token_unavailable"  # noqa: S105 (a code, not a secret)
    TOKEN_PENDING = "token_pending"  # noqa: S105
    NEEDS_LOGIN = "needs_login"
    REFRESH_RATE_LIMITED = "refresh_rate_limited"
    MIN_VALID_UNSATISFIABLE = "min_valid_unsatisfiable"
    INVALID_PARAMETER = "invalid_parameter"
    # The HTTP layer: no such route, no such method.
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # The request checks and the callers' keys (broker.web.security).
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    HOST_NOT_ALLOWED = "host_not_allowed"
    PROXIED_REQUEST = "proxied_request"
    BROWSER_REQUEST = "browser_request"
    NOT_LOOPBACK = "not_loopback"
    REQUIRED_HEADER_MISSING = "required_header_missing"
    HEADERS_TOO_LARGE = "headers_too_large"
    # A person's login (broker.engine.logins, broker.web.login_routes).
    LOGIN_NOT_SUPPORTED = "login_not_supported"
    LOGIN_NOT_FOUND = "login_not_found"
    LOGIN_EXPIRED = "login_expired"
    LOGIN_FAILED = "login_failed"

    @property
    def status(self) -> int:
        """The HTTP status of an answer with this code (:data:`STATUS`)."""
        return STATUS[self]


STATUS: Final[Mapping[ErrorCode, int]] = MappingProxyType(
    {
        ErrorCode.UNKNOWN_PROVIDER: 404,
        ErrorCode.TOKEN_UNAVAILABLE: 503,
        ErrorCode.TOKEN_PENDING: 503,
        ErrorCode.NEEDS_LOGIN: 503,
        ErrorCode.REFRESH_RATE_LIMITED: 429,
        ErrorCode.MIN_VALID_UNSATISFIABLE: 422,
        ErrorCode.INVALID_PARAMETER: 422,
        ErrorCode.NOT_FOUND: 404,
        ErrorCode.METHOD_NOT_ALLOWED: 405,
        ErrorCode.UNAUTHORIZED: 401,
        ErrorCode.FORBIDDEN: 403,
        ErrorCode.HOST_NOT_ALLOWED: 403,
        ErrorCode.PROXIED_REQUEST: 403,
        ErrorCode.BROWSER_REQUEST: 403,
        ErrorCode.NOT_LOOPBACK: 403,
        ErrorCode.REQUIRED_HEADER_MISSING: 412,
        ErrorCode.HEADERS_TOO_LARGE: 431,
        ErrorCode.LOGIN_NOT_SUPPORTED: 409,
        ErrorCode.LOGIN_NOT_FOUND: 404,
        ErrorCode.LOGIN_EXPIRED: 410,
        ErrorCode.LOGIN_FAILED: 502,
    }
)
"""The HTTP status of every :class:`ErrorCode`: the one place an error status is chosen."""

_HTTP_LAYER_CODES: Final = {
    STATUS[code]: code for code in (ErrorCode.NOT_FOUND, ErrorCode.METHOD_NOT_ALLOWED)
}


def http_layer_code(status: int) -> str:
    """The code of a refusal by the HTTP layer itself (no route, a wrong method ...):
    its :class:`ErrorCode`, else ``http_<status>``."""
    return _HTTP_LAYER_CODES.get(status, f"http_{status}")


class BrokerError(Exception):
    """Base class of every error the broker raises on purpose."""


class ApiError(BrokerError):
    """An error the HTTP API answers with: ``{"error": code, "message": ...}`` at the
    status :data:`STATUS` gives the code."""

    code: ErrorCode

    @property
    def status(self) -> int:
        return STATUS[self.code]


class ConfigError(BrokerError):
    """The configuration cannot be used; the message names file, key and problem."""


class UnknownProviderError(ApiError, LookupError):
    """No provider of that name is configured."""

    code = ErrorCode.UNKNOWN_PROVIDER


class TokenUnavailableError(ApiError):
    """No token that may be served exists right now."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        code: ErrorCode = ErrorCode.TOKEN_UNAVAILABLE,
    ):
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class LoginError(ApiError):
    """A person's login cannot go on: not this provider's way, an unknown, expired or used
    login link or callback, or the identity provider refused it. Never names a secret."""

    def __init__(self, message: str, *, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class FailureKind(enum.Enum):
    """How a failed token request should be treated."""

    TRANSIENT = "transient"  # network, 5xx, 429, garbage: retry with backoff
    REJECTED = "rejected"  # the credentials or grant were refused: retrying will not help soon
    MISCONFIGURED = "misconfigured"  # no token endpoint at that URL (404, 405, a redirect)


class FailureCode(enum.StrEnum):
    """The broker's own codes for a failed token request (:attr:`TokenEndpointError.code`).

    Beside them stand the identity provider's, data kept as strings: its OAuth2
    ``error`` (``invalid_grant`` ...) or ``http_<status>``. Both show in ``/providers``
    (``last_error``), ``X-Broker-Refresh-Failed``, the log and the metrics.
    """

    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    NETWORK_ERROR = "network_error"
    RESPONSE_TOO_LARGE = "response_too_large"
    INVALID_RESPONSE = "invalid_response"
    EXPIRED_ON_ARRIVAL = "expired_on_arrival"
    UNEXPECTED_REDIRECT = "unexpected_redirect"
    ENDPOINT_NOT_FOUND = "endpoint_not_found"
    NEEDS_LOGIN = "needs_login"
    DISCOVERY_FAILED = "discovery_failed"
    """The issuer's metadata could not be read, or names no token endpoint."""
    INVALID_ID_TOKEN = "invalid_id_token"  # noqa: S105 (a code, not a secret)
    """A login's ``id_token`` failed its checks (signature, issuer, audience, nonce, expiry)."""
    STORE_UNAVAILABLE = "store_unavailable"
    """The token store (Redis) could not be used: no lease, no read. Transient."""
    INTERNAL_ERROR = "internal_error"


class TokenEndpointError(BrokerError):
    """A token request failed.

    *code* is a stable, short identifier (a :class:`FailureCode`, or the identity
    provider's ``invalid_grant``, ``http_503`` ...) fit for logs, metrics and the
    status API. *refresh_token_rejected* is set when the failure says the refresh
    token itself is dead, so the caller can fall back to the primary grant.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        kind: FailureKind,
        status: int | None = None,
        refresh_token_rejected: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.kind = kind
        self.status = status
        self.refresh_token_rejected = refresh_token_rejected
        self.retry_after = retry_after
