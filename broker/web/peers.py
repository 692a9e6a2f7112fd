"""Who is on the other end of a Unix socket connection, as the kernel says.

A caller on the broker's Unix socket (``listen_unix``) can be identified without a key:
the kernel records the connecting process's pid, uid and gid when it calls ``connect()``
(``SO_PEERCRED``), and no process can present another's. :mod:`broker.server.connguard` reads
them once per connection and sets :data:`current_peer` around the HTTP protocol's work,
so every request task made for that connection (tasks copy the context they are made in)
sees its own caller; :meth:`broker.web.security.Guard.authorize` matches them against the
clients' ``unix_uid``, ``unix_gid`` and ``unix_exe``.
"""

from __future__ import annotations

import os
import socket
import struct
from contextvars import ContextVar
from dataclasses import dataclass

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class PeerCredentials:
    """The process that connected: its ids at ``connect()`` time and the program it ran."""

    pid: int
    uid: int
    gid: int
    exe: str | None
    """``/proc/<pid>/exe`` when the connection was made; None when it cannot be read (the
    caller is in another PID namespace, has exited, or the broker may not look)."""


current_peer: ContextVar[PeerCredentials | None] = ContextVar("current_peer", default=None)
"""The caller of the request being handled, for Unix socket connections; None for TCP."""


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """The credentials of the process at the other end of *sock*, a connected Unix socket.

    None for any other socket, or where the platform has no ``SO_PEERCRED`` (Linux has it).
    """
    if sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid, exe=_executable(pid))


def _executable(pid: int) -> str | None:
    # pid 0: the caller's process is not visible in the broker's PID namespace.
    if pid <= 0:
        return None
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
