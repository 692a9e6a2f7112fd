"""The broker's Unix domain socket listener (``listen_unix``) and the caller ids it uses.

A Unix socket is reached through the file system, so who may connect is the socket
file's mode and group, and who connected is known from the kernel (:mod:`broker.web.peers`):
callers can be configured by uid, gid and program (``clients.<name>.unix_uid``) instead
of, or besides, a key that could leak. This is how oidc-agent and the SPIFFE workload
API tell callers apart.

The socket is made so that it is never reachable with looser permissions than
configured: it is bound under a umask that leaves it owner-only, then given its mode
and group. A socket file left by a broker that died is replaced; one a running broker
listens on, or any other kind of file, stops the start with a clear error. The file is
removed at shutdown if it is still the one this broker made.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from broker.config.listening import UnixSocketSettings
from broker.core.errors import BrokerError


class UnixSocketError(BrokerError):
    """The socket cannot be made; the message is one line for the operator."""


@dataclass(frozen=True)
class UnixListener:
    """A listening Unix socket and the file it made."""

    sock: socket.socket
    path: Path
    file_id: tuple[int, int]
    """The socket file's (device, inode) when it was made."""

    def remove_file(self) -> None:
        """Remove the socket file if it is still the one this listener made (a newer
        broker may have replaced it)."""
        with contextlib.suppress(OSError):
            info = self.path.lstat()
            if (info.st_dev, info.st_ino) == self.file_id:
                self.path.unlink()


def listen_unix(settings: UnixSocketSettings, backlog: int) -> UnixListener:
    """A listening Unix socket at *settings.path*, with its mode and group. Raises
    UnixSocketError."""
    path = settings.path
    where = f"cannot listen on unix socket {path}"
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        _remove_stale(path)
    except OSError as exc:
        raise UnixSocketError(f"{where}: {exc.strerror or type(exc).__name__}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Owner-only from the moment it exists; the configured mode is set after. The umask
    # is the process's: nothing else runs yet when the broker sets up its listeners.
    previous = os.umask(0o177)
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        raise UnixSocketError(f"{where}: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.umask(previous)
    try:
        if settings.group is not None:
            os.chown(path, -1, settings.group)
        os.chmod(path, settings.mode)
        sock.listen(backlog)
        info = path.lstat()
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        what = "set its group" if exc.errno == errno.EPERM else "set it up"
        raise UnixSocketError(f"{where}: cannot {what}: {exc.strerror}") from None
    return UnixListener(sock, path, (info.st_dev, info.st_ino))


def _remove_stale(path: Path) -> None:
    """Remove a socket file no broker listens on; refuse a live one or any other file."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        msg = "the path exists and is not a socket (remove it, or choose another path)"
        raise UnixSocketError(f"cannot listen on unix socket {path}: {msg}")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        path.unlink()  # left by a broker that died: nobody is listening
        return
    except OSError:
        pass  # not ours to judge (permissions, say): let bind() report it
    else:
        msg = "another broker or program is listening on it"
        raise UnixSocketError(f"cannot listen on unix socket {path}: {msg}")
    finally:
        probe.close()
