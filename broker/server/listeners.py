"""The sockets the broker listens on, bound before anything is announced or started.

TCP at ``host:port`` (unless ``listen_tcp: false``), a Unix domain socket at
``listen_unix`` (:mod:`broker.server.unixsocket`) and Prometheus' own at ``metrics_listen``.
Binding first makes a busy port or path one clear error (:class:`ListenError`) instead of
a "serving on" line followed by uvicorn's shutdown; the sockets are then handed to uvicorn
with ``serve(sockets=...)``, and connections wait in the backlog until it accepts them.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from broker.config.settings import BrokerSettings
from broker.core.errors import BrokerError
from broker.server.unixsocket import UnixListener, UnixSocketError, listen_unix
from broker.web.metrics_port import LocalAddress


class ListenError(BrokerError):
    """The listening address cannot be had; the message is one line for the operator.
    *in_use*: another process has the port (``broker serve`` exits 3 then, not 2)."""

    def __init__(self, message: str, *, in_use: bool = False) -> None:
        super().__init__(message)
        self.in_use = in_use


BACKLOG = 2048
"""uvicorn's default; it calls listen() again with its own."""


def listen(host: str, port: int, *, key: str | None = None) -> list[socket.socket]:
    """Bind and listen at *port* on every address *host* names (``localhost``: maybe two), now.

    Bound before anything is announced or started, so a busy port is one clear
    error rather than a "serving on" line followed by uvicorn's shutdown; handed
    to uvicorn with ``serve(sockets=...)``. Connections wait in the backlog until
    uvicorn accepts them. *key* names the setting in errors (``metrics_listen``; by
    default the broker's own ``--port``). Raises ListenError.
    """
    try:
        addresses = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        what = "" if key is None else f" ({key})"
        raise ListenError(f"cannot listen on {host}:{port}{what}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in dict.fromkeys(addresses):
            if sockets and port == 0:  # every address on the one port the system picked
                address = (address[0], port_of(sockets), *address[2:])
            sockets.append(_listening_socket(family, address))
    except OSError as exc:
        close_all(sockets)
        in_use = exc.errno == errno.EADDRINUSE
        raise ListenError(_listen_failure(host, port, exc, key), in_use=in_use) from None
    return sockets


def _listening_socket(family: socket.AddressFamily, address: tuple[object, ...]) -> socket.socket:
    # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets
    # whose proto says TCP; without it every answer stalls ~40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # As asyncio's create_server, which uvicorn used: a restart need not wait out
        # TIME_WAIT, and an IPv6 socket does not also take the IPv4 port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _listen_failure(host: str, port: int, exc: OSError, key: str | None) -> str:
    where = f"{listen_address(host)}:{port}" + ("" if key is None else f" ({key})")
    if exc.errno == errno.EADDRINUSE:
        other = port + 101 if port + 101 <= 65535 else port - 101
        instead = f"--port {other}" if key is None else f"another {key} port"
        return (
            f"cannot listen on {where}: address already in use"
            f" (another broker or program is using it; try {instead})"
        )
    return f"cannot listen on {where}: {exc.strerror or type(exc).__name__}"


def listen_address(host: str) -> str:
    """*host* as it goes before ``:port`` in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


def port_of(sockets: Sequence[socket.socket]) -> int:
    """The port the sockets listen on (the system's pick when 0 was asked for)."""
    port: int = sockets[0].getsockname()[1]
    return port


def local_address(sock: socket.socket) -> LocalAddress:
    """A listening TCP socket's family, address and port."""
    host, port = sock.getsockname()[:2]
    return (sock.family, str(host), int(port))


def close_all(sockets: Sequence[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


@dataclass
class Listeners:
    """Every socket this broker listens on; :meth:`close` also removes its socket file."""

    tcp: list[socket.socket] = field(default_factory=list)
    unix: UnixListener | None = None
    metrics: list[socket.socket] = field(default_factory=list)
    """``metrics_listen``'s: served by the same server, answered by
    :class:`broker.web.metrics_port.MetricsPort`."""
    metrics_at: tuple[LocalAddress, ...] = ()
    """Where the metrics sockets listen (kept: uvicorn's server takes the sockets over)."""

    @property
    def sockets(self) -> list[socket.socket]:
        """Every listening socket, the metrics ones included."""
        unix = [self.unix.sock] if self.unix is not None else []
        return [*self.tcp, *unix, *self.metrics]

    def metrics_url(self) -> str | None:
        """Where Prometheus scrapes, for the log: ``http://127.0.0.1:9464/metrics``."""
        if not self.metrics_at:
            return None
        _, host, port = self.metrics_at[0]
        return f"http://{listen_address(host)}:{port}/metrics"

    def addresses(self, host: str) -> str:
        """Where callers reach the broker, for the log: ``http://127.0.0.1:8181 and unix:...``."""
        where = []
        if self.tcp:
            where.append(f"http://{listen_address(host)}:{port_of(self.tcp)}")
        if self.unix is not None:
            where.append(f"unix:{self.unix.path}")
        return " and ".join(where)

    def close(self) -> None:
        close_all(self.tcp)
        close_all(self.metrics)
        if self.unix is not None:
            self.unix.sock.close()
            self.unix.remove_file()


def open_listeners(settings: BrokerSettings) -> Listeners:
    """Bind every listener *settings* names, now. Raises ListenError (nothing left bound)."""
    listeners = Listeners()
    try:
        if settings.listen_tcp:
            listeners.tcp = listen(settings.host, settings.port)
        if settings.listen_unix is not None:
            listeners.unix = listen_unix(settings.listen_unix, BACKLOG)
        metrics = settings.metrics_listen
        if metrics is not None:
            listeners.metrics = listen(metrics.host, metrics.port, key="metrics_listen")
            listeners.metrics_at = tuple(local_address(sock) for sock in listeners.metrics)
    except UnixSocketError as exc:
        listeners.close()
        raise ListenError(str(exc)) from None
    except ListenError:
        listeners.close()
        raise
    return listeners
