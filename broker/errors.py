"""The broker's exceptions.

::

    BrokerError
     ├─ ConfigError            bad YAML, env or secret file at start → exit non-zero
     ├─ UnknownProviderError   no such provider → HTTP 404
     ├─ TokenUnavailableError  no fitting token now → HTTP 503 (422, 429) + Retry-After
     ├─ TokenEndpointError     the identity provider said no, or answered garbage
     ├─ Denied                 (broker.security) a request refused → HTTP 401, 403, 412, 431
     ├─ StateError             (broker.state) the state directory cannot be used
     ├─ StoreError             (broker.store) a token store could not do what was asked
     ├─ SinkError              (broker.sinks) a sink file cannot be written
     ├─ UnixSocketError        (broker.unixsocket) the Unix socket cannot be made
     └─ ListenError            (broker.listeners) an address cannot be listened on

The subclasses defined elsewhere import :class:`BrokerError` from here, never the
other way round: this module imports nothing of the broker's.

Messages never contain a secret or a token: they name the provider, the HTTP
status and the identity provider's error code, and quote at most a short,
scrubbed piece of its error body.
"""

from __future__ import annotations

import enum


class BrokerError(Exception):
    """Base class of every error the broker raises on purpose."""


class ConfigError(BrokerError):
    """The configuration cannot be used; the message names file, key and problem."""


class UnknownProviderError(BrokerError, LookupError):
    """No provider of that name is configured."""


class TokenUnavailableError(BrokerError):
    """No token that may be served exists right now; *status* is the HTTP answer's."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        code: str = "token_unavailable",
        status: int = 503,
    ):
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code
        self.status = status


class FailureKind(enum.Enum):
    """How a failed token request should be treated."""

    TRANSIENT = "transient"  # network, 5xx, 429, garbage: retry with backoff
    REJECTED = "rejected"  # the credentials or grant were refused: retrying will not help soon
    MISCONFIGURED = "misconfigured"  # no token endpoint at that URL (404, 405, a redirect)


class TokenEndpointError(BrokerError):
    """A token request failed.

    *code* is a stable, short identifier (``invalid_grant``, ``http_503``,
    ``connect_error``, ``invalid_response`` ...) fit for logs, metrics and the
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
