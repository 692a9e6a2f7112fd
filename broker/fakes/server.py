"""Run an ASGI app on a real socket: in a background thread for sync tests, or in the current loop.

Both variants bind the listening socket themselves (port 0 gives a free port) and hand it to
uvicorn, so the base URL is known before the first request and no port can be stolen between
"find a free port" and "bind it".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

STARTUP_TIMEOUT = 10.0
"""Seconds to wait for uvicorn to start before giving up."""

Lifespan = Literal["on", "off", "auto"]


class _QuietServer(uvicorn.Server):
    """A uvicorn server that never touches signal handlers and notices ``should_exit`` quickly.

    uvicorn 0.54 skips signal handlers off the main thread already, but the in-loop variant
    runs on the main thread next to the broker, whose own Ctrl+C handling must stay in charge.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        # uvicorn checks should_exit every 100 ms; fakes start and stop once per test, so a
        # 10 ms tick keeps shutdown short. on_tick also refreshes the Date header, which is cheap.
        counter = 0
        while not await self.on_tick(counter):
            await asyncio.sleep(0.01)
            counter = (counter + 1) % 864000


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every response stalls ~40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _server(app: ASGIApp, lifespan: Lifespan) -> _QuietServer:
    config = uvicorn.Config(
        app,
        log_level="warning",
        # Leave the host process's logging configuration alone (uvicorn would dictConfig it).
        log_config=None,
        access_log=False,
        # The fakes send Date from their own, possibly skewed, clock (FakeProvider does it).
        date_header=False,
        # Fakes have no lifespan; "on" is for apps such as the broker that need startup/shutdown.
        lifespan=lifespan,
        # The fakes speak plain HTTP; skipping websocket support avoids importing websockets.
        ws="none",
    )
    return _QuietServer(config)


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, lifespan: Lifespan = "off"
) -> Iterator[str]:
    """Serve ``app`` on ``host`` in a daemon thread; yield its base URL, e.g. ``http://127.0.0.1:54321``.

    Blocks until uvicorn reports it has started (at most ``STARTUP_TIMEOUT`` seconds) and, on
    exit, asks it to stop and joins the thread. Port 0 picks a free port.
    """
    sock = _bind(host, port)
    server = _server(app, lifespan)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # uvicorn reports a failed startup with sys.exit()
            failures.append(exc)

    thread = threading.Thread(target=run, name="fake-idp", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive():
                cause = failures[0] if failures else None
                raise RuntimeError("fake server thread exited during startup") from cause
            if time.monotonic() > deadline:
                raise RuntimeError(f"fake server did not start within {STARTUP_TIMEOUT} s")
            time.sleep(0.005)
        yield _base_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT)
        sock.close()


class FakeServer:
    """Serve an ASGI app inside the running event loop (e.g. next to the broker in demo mode).

    >>> server = FakeServer(FakeHiro().app)          # doctest: +SKIP
    >>> base_url = await server.start()              # doctest: +SKIP
    >>> await server.stop()                          # doctest: +SKIP
    """

    def __init__(
        self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, lifespan: Lifespan = "off"
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._lifespan: Lifespan = lifespan
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """The URL the server listens on; only available after :meth:`start`."""
        if self._base_url is None:
            raise RuntimeError("FakeServer is not started")
        return self._base_url

    async def start(self) -> str:
        """Bind, start serving in a background task and return the base URL once ready."""
        if self._task is not None:
            raise RuntimeError("FakeServer already started")
        sock = _bind(self._host, self._port)
        server = _server(self._app, self._lifespan)
        task = asyncio.create_task(self._run(server, sock), name="fake-idp")
        self._server, self._task = server, task
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if task.done():
                self._server = self._task = None
                sock.close()
                task.result()  # re-raise the startup error, if any
                raise RuntimeError("fake server exited during startup")
            if time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"fake server did not start within {STARTUP_TIMEOUT} s")
            await asyncio.sleep(0.005)
        self._base_url = _base_url(sock)
        return self._base_url

    @staticmethod
    async def _run(server: _QuietServer, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:
            # uvicorn exits the process on a failed startup; in a shared loop that would take
            # the broker down too, so it becomes an ordinary error of this task instead.
            raise RuntimeError(f"fake server exited with status {exc.code}") from exc

    async def stop(self) -> None:
        """Ask uvicorn to shut down and wait until it has."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._server = self._task = None


async def serve(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_started: Callable[[str], None] | None = None,
    lifespan: Lifespan = "off",
) -> None:
    """Serve ``app`` until cancelled; ``on_started`` receives the base URL (useful with port 0)."""
    server = FakeServer(app, host, port, lifespan=lifespan)
    base_url = await server.start()
    try:
        if on_started is not None:
            on_started(base_url)
        await asyncio.Event().wait()
    finally:
        await server.stop()
