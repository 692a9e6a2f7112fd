"""Where a process on this host reaches a broker (broker.core.addresses.local_url): table."""

from __future__ import annotations

import pytest

from broker.core.addresses import local_url


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8181"),
        ("0.0.0.0", "http://127.0.0.1:8181"),
        ("", "http://127.0.0.1:8181"),
        ("::", "http://[::1]:8181"),  # the broker's IPv6 sockets are IPv6-only
        ("::1", "http://[::1]:8181"),
        ("localhost", "http://localhost:8181"),
        ("192.0.2.10", "http://192.0.2.10:8181"),
    ],
)
def test_local_url(host: str, url: str) -> None:
    assert local_url(host, 8181) == url
