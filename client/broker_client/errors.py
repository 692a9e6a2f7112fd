"""The exceptions the client helpers raise, for apps to catch."""

from __future__ import annotations


class BrokerError(Exception):
    """Base class of the errors the client helpers raise."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached or did not hand out a token.

    Attributes:
        provider: the provider asked for.
        status: the broker's HTTP status, ``None`` when it could not be reached.
        code: the broker's stable ``error`` code (``token_unavailable``, ``unknown_provider``,
            ...), or ``broker_unreachable`` / ``invalid_response`` for problems on the way.
        detail: the broker's ``message``.
        retry_after: seconds from the broker's ``Retry-After`` header, if it sent one.
    """

    def __init__(
        self,
        provider: str,
        *,
        url: str,
        code: str,
        detail: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        where = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"broker {url} ({where}) for provider {provider!r}: {code}: {detail}")
        self.provider = provider
        self.url = url
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
