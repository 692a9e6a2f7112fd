"""The open-file budget: how many callers' connections the broker may hold at once.

Every connection is a file descriptor, and so is every socket the broker opens to an
identity provider. Callers' connections get what the open-file limit leaves after a
reserve, so that no number of them can take the descriptors a token refresh needs:

    cap = min(max_connections,
              open-file limit - fd_reserve
                              - FDS_PER_TOKEN_REQUEST * max_concurrent_requests
                              - CLOSING_HEADROOM)
"""

from __future__ import annotations

import logging
import resource

from broker.core.errors import ConfigError

log = logging.getLogger("broker.limits")

FDS_PER_TOKEN_REQUEST = 2
"""A token request in flight holds its socket, and while it connects a name lookup's
socket too (or a second address's, trying IPv6 and IPv4)."""

CLOSING_HEADROOM = 16
"""Connections closed to make room for new ones hold their descriptor until the event
loop's next turn; at most this many are in that state (:mod:`broker.server.connguard`)."""

MIN_CONNECTIONS = 8
"""Fewer than this is no service: the broker refuses to start instead."""


def connection_cap(
    open_files: int | None,
    *,
    max_connections: int,
    fd_reserve: int,
    max_concurrent_requests: int,
) -> int:
    """Callers' connections allowed at once with *open_files* descriptors (None: unlimited).

    Raises ConfigError when the limit leaves fewer than :data:`MIN_CONNECTIONS`.
    """
    if open_files is None:
        return max_connections
    kept = fd_reserve + FDS_PER_TOKEN_REQUEST * max_concurrent_requests + CLOSING_HEADROOM
    room = open_files - kept
    if room < MIN_CONNECTIONS:
        msg = (
            f"limits: the open-file limit ({open_files}) leaves {max(room, 0)} file descriptors"
            f" for callers' connections after {kept} kept for the broker itself"
            f" (fd_reserve {fd_reserve}, {FDS_PER_TOKEN_REQUEST} per max_concurrent_requests"
            f" {max_concurrent_requests}, {CLOSING_HEADROOM} for closing connections); raise the"
            " limit (ulimit -n, systemd LimitNOFILE=) or lower those settings"
        )
        raise ConfigError(msg)
    return min(room, max_connections)


def raise_open_file_limit() -> int | None:
    """Raise this process's soft open-file limit to its hard limit; return the soft limit
    now in force (None: unlimited).

    The soft limit is often 1,024 (systemd's default) while the hard limit allows far more;
    a process may raise its own soft limit up to the hard one without any privilege.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:  # an unlimited hard limit may exceed the kernel's
            wanted = "unlimited" if hard == resource.RLIM_INFINITY else hard
            log.warning("cannot raise the open-file limit from %d to %s: %s", soft, wanted, exc)
        else:
            soft = hard
    return None if soft == resource.RLIM_INFINITY else soft
