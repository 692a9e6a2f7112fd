"""What both helpers offer apps besides auth, on top of their :class:`TokenSource`."""

from __future__ import annotations

from broker_client.source import TokenSource


def bearer(token: str) -> str:
    """The ``Authorization`` value an API gets."""
    return f"Bearer {token}"


class TokenHelper:
    """The base of :class:`BrokerAuth` and :class:`BrokerRequestsAuth`; they set ``_source``."""

    _source: TokenSource

    @property
    def provider(self) -> str:
        return self._source.provider

    @property
    def broker_url(self) -> str:
        return self._source.broker_url

    def get_token(self) -> str:
        """The current token (cached, or fetched from the broker)."""
        return self._source.token_sync()

    def invalidate(self) -> None:
        """Forget the cached token; the next request fetches one from the broker."""
        self._source.invalidate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.provider!r}, broker_url={self.broker_url!r})"
