"""What counts as this host: loopback addresses and names, and the URLs that reach the
broker from it. Pure, no I/O.

Used by the config (a network listener needs clients; plain http only to
loopback), by the request checks (without clients, only loopback peers) and by the
login's links and the CLI (where a local process finds the broker).
"""

from __future__ import annotations

import ipaddress


def is_loopback_address(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost`` (a name no DNS answer can move)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
"""Listen addresses that mean "every address": a local process reaches them on loopback."""


def local_url(host: str, port: int) -> str:
    """The ``http://`` base URL at which a process on this host reaches a broker listening
    on *host*:*port*: a wildcard address by loopback, ``::`` by ``::1`` (the broker's IPv6
    sockets are IPv6-only, so 127.0.0.1 would be refused); IPv6 in brackets."""
    reached = ("::1" if host == "::" else "127.0.0.1") if host in WILDCARD_HOSTS else host
    return f"http://[{reached}]:{port}" if ":" in reached else f"http://{reached}:{port}"


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of *url*: what a browser calls its origin."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
