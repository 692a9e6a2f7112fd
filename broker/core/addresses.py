"""What counts as this host: loopback addresses and names. Pure, no I/O.

Used by the config (a network listener needs clients; plain http only to
loopback) and by the request checks (without clients, only loopback peers).
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
