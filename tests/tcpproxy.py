"""A TCP proxy for tests that can stall: a network path that goes silent without closing.

:class:`StallingProxy` listens on a free 127.0.0.1 port and forwards every connection to
an upstream port, byte for byte, in both directions. :meth:`StallingProxy.stall` makes it
forward nothing: connections stay open, bytes sent either way are held (the proxy stops
reading, so the rest waits in the kernel's buffers), and a new connection is accepted but
not connected upstream. No error, no close: what a client sees of a peer behind a
partition, or of a server that hangs. :meth:`StallingProxy.resume` lets everything held
flow again, in order per connection, as TCP delivers what it retransmitted once a
partition heals (a client that gave up meanwhile has closed its end: what it had sent
still arrives, then its close).

It runs its own asyncio loop in a daemon thread; use it as a context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType

CHUNK = 65536
"""Bytes read at once from one side of a connection."""

PATIENCE = 10.0
"""Seconds the proxy may take to start or stop before the test fails."""


class StallingProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:*upstream*; see the module text."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.accepted = 0
        """Connections accepted so far."""
        self.accepted_stalled = 0
        """Connections accepted while stalled (held, not connected upstream)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stalling-proxy")
        self._thread.daemon = True
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def stalled(self) -> bool:
        return not self._open.is_set()

    def stall(self) -> None:
        """Forward nothing from now on (see the module text)."""
        self._call(self._open.clear)

    def resume(self) -> None:
        """Forward again, what was held first."""
        self._call(self._open.set)

    def __enter__(self) -> StallingProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = future.result(PATIENCE)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(PATIENCE)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(PATIENCE)
        self._loop.close()

    def _call(self, action: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            action()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(PATIENCE)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        if not self._open.is_set():
            self.accepted_stalled += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._open.wait()  # accepted, and held while stalled
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream)
            await asyncio.gather(self._pump(reader, upstream), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    end.close()
            self._tasks.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(CHUNK):
                await self._open.wait()  # a stall holds what was read, and reads no more
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            # One side closed: so does the other (its pump then ends on its own).
            with contextlib.suppress(OSError):
                sink.close()
