"""Callers' connections: a deadline for every request head, and a cap on how many are open.

uvicorn (0.54; its h11 and httptools protocols alike) arms a timer only once a response
is complete (``timeout_keep_alive``) and cancels it on the next byte received: a new
connection that sends nothing, or a request head sent one byte a second, holds its file
descriptor forever. ``limit_concurrency`` answers 503 but still accepts every socket.
This module puts two things in front of uvicorn's own protocol, unchanged otherwise:

* :class:`GuardedHTTP` wraps the protocol uvicorn would pick. A request head must be
  complete within ``limits.header_timeout`` of the connection being opened, or of the
  first byte of a further request on a kept-alive connection; else the connection is
  reset. The same time is given to a caller that has stopped reading its answers (they
  pile up past the transport's high-water mark, and a pipelined request's answer would
  wait for them forever). Idle kept-alive connections are uvicorn's ``timeout_keep_alive``.
* :class:`ConnectionGate` admits at most ``cap`` connections (:mod:`broker.server.fdbudget`).
  Its listening socket decides at ``accept()``, before asyncio builds anything: at the
  cap it resets the connection that has gone longest without a request (an idle or a
  slow one) to make room, and only when every connection is in the middle of a request
  is the new one refused (closed at once). While the room made is being released (the
  event loop's next turn), new connections wait in the listening socket's backlog. Under
  another event loop (uvloop accepts in C) the same decision is made when the connection
  is made.

On a Unix socket, :class:`GuardedHTTP` also reads who connected (:mod:`broker.web.peers`) and
makes it known to that connection's requests.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

from uvicorn.config import Config
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.server import ServerState

from broker.config.settings import BrokerSettings
from broker.server.fdbudget import CLOSING_HEADROOM, connection_cap, raise_open_file_limit
from broker.web.peers import PeerCredentials, current_peer, peer_credentials

log = logging.getLogger("broker.connections")

EVICTION_SCAN = 64
"""Connections looked at, oldest first, for one to close at the cap (the oldest are
almost always idle; a busy one is skipped)."""

REPORT_INTERVAL = 60.0
"""Seconds between log lines about closed and refused connections."""


class ConnectionGate:
    """Admits callers' connections up to *cap* and gives each request head *header_timeout*."""

    def __init__(self, cap: int, header_timeout: float, *, open_files: int | None = None) -> None:
        self.cap = cap
        self.header_timeout = header_timeout
        self.open_files = open_files
        """The open-file limit the cap was sized by (None: unlimited, or not asked)."""
        self._live: OrderedDict[GuardedHTTP, None] = OrderedDict()
        """Made connections, the one longest without a new request head first."""
        self._accepted: dict[int, socket.socket] = {}
        """Sockets admitted by :class:`GatedListener` whose protocol is not made yet, by fd."""
        self._making_room = 0
        """Connections reset to make room whose descriptor is not released yet."""
        self.closed: Counter[str] = Counter()
        """``timed_out``, ``stalled``, ``evicted``, ``refused`` so far (tests, the log)."""
        self._unreported: Counter[str] = Counter()
        self._reported_at = -REPORT_INTERVAL

    def describe(self) -> str:
        """One line for the log at start."""
        limit = "unlimited" if self.open_files is None else self.open_files
        return (
            f"callers' connections: at most {self.cap} open at once (open-file limit {limit}),"
            f" each request head within {self.header_timeout:g} s"
        )

    @property
    def open(self) -> int:
        """Connections holding a descriptor: made, or accepted and about to be."""
        return len(self._live) + len(self._accepted)

    def listeners(self, sockets: Sequence[socket.socket]) -> list[socket.socket]:
        """*sockets* (listening) as sockets whose ``accept()`` this gate decides."""
        return [GatedListener(self, sock) for sock in sockets]

    def protocol(
        self, inner: Callable[..., asyncio.Protocol] = AutoHTTPProtocol
    ) -> type[GuardedHTTP]:
        """The HTTP protocol class for uvicorn's ``http=`` option: *inner* (the protocol
        uvicorn would pick by default) behind this gate."""
        this_gate, this_inner = self, inner

        class Guarded(GuardedHTTP):
            gate = this_gate
            inner = this_inner

        return Guarded

    # -- decisions -------------------------------------------------------------------------

    def releasing(self) -> bool:
        """At the cap, with room about to appear: a new connection should wait (in the
        listening socket's backlog) for the event loop's next turns rather than be refused.

        Room appears when connections closed to make room release their descriptors, and
        connections accepted but not set up yet become ones that room can be made from.
        """
        if self.open < self.cap:
            return False
        self._forget_failed_accepts()
        if self.open < self.cap:
            return False
        if self._making_room >= CLOSING_HEADROOM:
            return True
        in_flux = bool(self._accepted) or self._making_room > 0
        return in_flux and self._longest_without_request() is None

    def admit(self) -> bool:
        """Whether one more connection may be opened; at the cap, make room if possible."""
        if self.open < self.cap:
            return True
        self._forget_failed_accepts()
        if self.open < self.cap:
            return True
        # Admitting past the cap is fine while the room made is still being released:
        # at most CLOSING_HEADROOM such descriptors, which the budget sets aside.
        if self._making_room < CLOSING_HEADROOM:
            victim = self._longest_without_request()
            if victim is not None:
                victim.reset(evicted=True)
                self._making_room += 1
                self._note("evicted")
                return True
        self._note("refused")
        return False

    def _longest_without_request(self) -> GuardedHTTP | None:
        for seen, conn in enumerate(self._live):
            if seen >= EVICTION_SCAN:
                break
            if not conn.closing and conn.between_requests():
                return conn
        return None

    def _forget_failed_accepts(self) -> None:
        # asyncio closes an accepted socket it could not set up (its protocol is never made).
        self._accepted = {fd: s for fd, s in self._accepted.items() if s.fileno() != -1}

    # -- bookkeeping, called by the listener and the protocol ------------------------------

    def accepted(self, conn: socket.socket) -> None:
        self._accepted[conn.fileno()] = conn

    def enter(self, conn: GuardedHTTP, fd: int) -> bool:
        """A connection is made: True if it may stay (admitted at accept, or now)."""
        if self._accepted.pop(fd, None) is None and not self.admit():
            return False
        self._live[conn] = None
        return True

    def progressed(self, conn: GuardedHTTP) -> None:
        """*conn* delivered a request head: it goes to the back of the eviction line."""
        self._live.move_to_end(conn)

    def leave(self, conn: GuardedHTTP) -> None:
        if conn in self._live:
            del self._live[conn]
            if conn.evicted:
                self._making_room -= 1

    def timed_out(self, what: str = "timed_out") -> None:
        self._note(what)

    def _note(self, what: str) -> None:
        self.closed[what] += 1
        self._unreported[what] += 1
        now = time.monotonic()
        if now - self._reported_at >= REPORT_INTERVAL:
            self._reported_at = now
            self._report()

    def _report(self) -> None:
        counts, self._unreported = self._unreported, Counter()
        parts = []
        if counts["timed_out"]:
            parts.append(
                f"reset {counts['timed_out']} that sent no complete request head"
                f" within {self.header_timeout:g} s"
            )
        if counts["stalled"]:
            parts.append(
                f"reset {counts['stalled']} that read no answer for {self.header_timeout:g} s"
            )
        if counts["evicted"]:
            parts.append(
                f"reset {counts['evicted']} to make room (those longest without a request)"
            )
        if counts["refused"]:
            parts.append(f"refused {counts['refused']} (every connection busy)")
        busy = counts["evicted"] or counts["refused"]
        log.log(
            logging.WARNING if busy else logging.INFO,
            "callers' connections (at most %d open): %s (reported at most every %g s)",
            self.cap,
            ", ".join(parts),
            REPORT_INTERVAL,
        )


def connection_gate(settings: BrokerSettings) -> ConnectionGate:
    """The gate for this process: raises the open-file limit and sizes the cap by it.

    Raises ConfigError when the limit leaves too few descriptors for callers.
    """
    limits = settings.limits
    open_files = raise_open_file_limit()
    cap = connection_cap(
        open_files,
        max_connections=limits.max_connections,
        fd_reserve=limits.fd_reserve,
        max_concurrent_requests=settings.max_concurrent_requests,
    )
    return ConnectionGate(cap, limits.header_timeout, open_files=open_files)


class GatedListener(socket.socket):
    """A listening socket whose ``accept()`` asks the gate first; refused ones are closed
    before asyncio sees them, so they never hold a descriptor past this call."""

    def __init__(self, gate: ConnectionGate, sock: socket.socket) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self._gate = gate

    def accept(self) -> tuple[socket.socket, Any]:
        if self._gate.releasing():
            # Not refused: left in the backlog until the room made is released (asyncio's
            # accept loop ends for this turn and comes back on the next one).
            raise BlockingIOError
        conn, address = super().accept()  # BlockingIOError once the backlog is empty
        if not self._gate.admit():
            conn.close()
            # Ends asyncio's accept loop for this turn: whatever else waits in the backlog
            # is looked at after the rest of the loop's work, one refusal per turn.
            raise BlockingIOError
        self._gate.accepted(conn)
        return conn, address


class GuardedHTTP(asyncio.Protocol):
    """uvicorn's HTTP protocol behind a request-head deadline and the gate.

    Every event goes to the wrapped protocol unchanged; it writes to the transport itself.
    A request head is complete when the wrapped protocol starts a new request cycle (its
    ``cycle`` attribute, in h11, httptools and zttp alike).
    """

    gate: ClassVar[ConnectionGate]
    inner: ClassVar[Callable[..., asyncio.Protocol]]
    """Set by :meth:`ConnectionGate.protocol`."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._http = type(self).inner(
            config=config, server_state=server_state, app_state=app_state, _loop=_loop
        )
        self._transport: asyncio.Transport | None = None
        self._made = False
        self._deadline: asyncio.TimerHandle | None = None
        self._cycle_at_deadline: object = None
        self._stalled: asyncio.TimerHandle | None = None
        self.closing = False
        self.evicted = False
        self._peer: PeerCredentials | None = None

    def _cycle(self) -> object:
        return getattr(self._http, "cycle", None)

    def between_requests(self) -> bool:
        """No request is being answered: none has arrived yet, or the last one's answer is sent."""
        cycle = self._cycle()
        return cycle is None or bool(getattr(cycle, "response_complete", False))

    def reset(self, *, evicted: bool = False) -> None:
        """Close at once with a TCP reset, dropping whatever was not sent yet."""
        self.closing = True
        self.evicted = evicted
        if self._transport is not None:
            self._transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP server's
        sock = transport.get_extra_info("socket")
        if not self.gate.enter(self, -1 if sock is None else sock.fileno()):
            self.reset()
            return
        self._made = True
        if sock is not None:
            self._peer = peer_credentials(sock)
        self._http.connection_made(transport)
        self._start_deadline()

    def data_received(self, data: bytes) -> None:
        before = self._cycle()
        # The wrapped protocol makes a request's task here; the task copies the context,
        # so it (and the tasks of further requests on this connection, made from it)
        # knows its caller on a Unix socket.
        reset = current_peer.set(self._peer)
        try:
            self._http.data_received(data)
        finally:
            current_peer.reset(reset)
        if self._cycle() is not before:  # a request head is complete
            self.gate.progressed(self)
            self._stop_deadline()
        elif self._deadline is None and self.between_requests():
            self._start_deadline()  # the first bytes of a further request; the rest must follow

    def _start_deadline(self) -> None:
        self._cycle_at_deadline = self._cycle()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.gate.header_timeout, self._head_overdue)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_overdue(self) -> None:
        self._deadline = None
        # A head completed outside data_received (a pipelined request) is progress too.
        if self._cycle() is self._cycle_at_deadline and not self.closing:
            self.gate.timed_out()
            self.reset()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        self._stop_stall_clock()
        self.gate.leave(self)
        if self._made:
            self._http.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self._http.eof_received() if self._made else None

    def pause_writing(self) -> None:
        if self._made:
            self._http.pause_writing()
            loop = asyncio.get_running_loop()
            self._stalled = loop.call_later(self.gate.header_timeout, self._not_reading)

    def resume_writing(self) -> None:
        self._stop_stall_clock()
        if self._made:
            self._http.resume_writing()

    def _stop_stall_clock(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _not_reading(self) -> None:
        self._stalled = None
        if not self.closing:
            self.gate.timed_out("stalled")
            self.reset()
