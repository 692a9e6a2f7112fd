"""The whole broker in one event loop on a :class:`~tests.support.FakeClock`: no socket, no
thread, no real time.

- :class:`IdPs` is the broker's transport to the identity providers (``create_app``'s
  ``transport=``): it routes each request by origin (``http://127.0.0.1:9001``) to a
  fake's ASGI app, refuses the connection for an origin that is down, and applies the
  request's read timeout on the fake clock, so a slow identity provider costs no real time.
- :func:`in_process` runs the broker's ASGI app (fast path and FastAPI) with its lifespan
  on the clock and yields an :class:`InProcess`, whose ``client`` calls it through
  ``httpx.ASGITransport`` exactly as a caller on the wire would.

Time moves only when the test calls ``await clock.advance(seconds)`` (or a helper here that
says it does: :func:`drive`, :meth:`InProcess.eventually`). Point the fakes' ``now`` at
``clock.wall`` so the tokens they issue expire on the same clock.

The config's provider URLs only name origins: nothing connects to them, so loopback ones
(``http://127.0.0.1:<label>``) satisfy the config's cleartext rules and route here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from starlette.types import ASGIApp, Message

from broker.config.settings import BrokerSettings
from broker.ops.logs import CLIENT_LOGGERS, UVICORN_LOGGERS, configure_logging
from broker.web.app import create_app
from broker.web.fastpath import TokenFastPath
from tests.support import FakeClock, settle

T = TypeVar("T")

BROKER_URL = "http://127.0.0.1:8181"
"""Callers' base URL: loopback, so the broker's Host check lets them in."""

STEP = 0.05
"""Fake seconds :func:`drive` advances at a time while an awaited call is still waiting."""

PATIENCE = 60.0
"""Fake seconds :func:`drive` waits for a call before it fails the test."""


@dataclass(frozen=True, slots=True)
class Sent:
    """One request the broker sent to an identity provider, on the fake clock."""

    origin: str
    method: str
    path: str
    at: float
    """``clock.monotonic()`` when the request was sent."""
    delivered: bool
    """False when the origin was down (connection refused): the fake never saw it."""


class IdPs(httpx.AsyncBaseTransport):
    """Identity providers by origin, in-process, on fake time.

    Like a network it refuses connections to an origin that is down
    (``httpx.ConnectError``), gives up waiting for an answer after the request's read
    timeout on the clock (``httpx.ReadTimeout``; the broker sets one on every token
    request), and reports a body shorter than its ``Content-Length`` as a cut connection
    (``httpx.RemoteProtocolError``, what h11 raises), which ``ASGITransport`` alone would
    hand over as a short body.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._apps: dict[str, httpx.ASGITransport] = {}
        self.sent: list[Sent] = []
        """Every request, oldest first: unlike a fake's own log (``RecordedRequest.at`` is
        real time) its times are on the fake clock."""

    def serve(self, origin: str, app: ASGIApp) -> None:
        """Route *origin* (``scheme://host:port``) to *app* from now on: it is up."""
        self._apps[_origin(httpx.URL(origin))] = httpx.ASGITransport(app=app)

    def stop(self, origin: str) -> None:
        """Take *origin* down: its connections are refused until :meth:`serve` again."""
        del self._apps[_origin(httpx.URL(origin))]

    def times(self, origin: str, path: str) -> list[float]:
        """When requests for *path* reached *origin* (delivered ones only), oldest first."""
        key = _origin(httpx.URL(origin))
        return [s.at for s in self.sent if s.origin == key and s.path == path and s.delivered]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = _origin(request.url)
        app = self._apps.get(origin)
        self.sent.append(
            Sent(origin, request.method, request.url.path, self.clock.monotonic(), app is not None)
        )
        if app is None:
            msg = f"[Errno 111] Connection refused ({origin} is down)"
            raise httpx.ConnectError(msg, request=request)
        read_timeout = request.extensions.get("timeout", {}).get("read")
        answer = asyncio.ensure_future(_answer(app, request))
        if read_timeout is None:
            return await answer
        deadline = asyncio.ensure_future(self.clock.sleep(read_timeout))
        late = True
        try:
            await asyncio.wait({answer, deadline}, return_when=asyncio.FIRST_COMPLETED)
            late = not answer.done()
        finally:
            deadline.cancel()
            if not answer.done():
                answer.cancel()  # the fake's handler stops where it waits, as on a hang-up
        if late:
            msg = f"no answer from {origin} within {read_timeout:g} s (fake clock)"
            raise httpx.ReadTimeout(msg, request=request)
        return answer.result()


async def _answer(app: httpx.ASGITransport, request: httpx.Request) -> httpx.Response:
    response = await app.handle_async_request(request)
    body = b"".join([chunk async for chunk in response.aiter_raw()])
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and len(body) < int(declared):
        msg = "peer closed connection without sending complete message body"
        raise httpx.RemoteProtocolError(msg, request=request)
    return httpx.Response(
        response.status_code, headers=response.headers, stream=httpx.ByteStream(body)
    )


def _origin(url: httpx.URL) -> str:
    port = url.port or {"http": 80, "https": 443}[url.scheme]
    return f"{url.scheme}://{url.host}:{port}"


async def drive(
    clock: FakeClock,
    call: Awaitable[T],
    *,
    step: float = STEP,
    patience: float = PATIENCE,
) -> T:
    """Await *call*; while it waits on the clock (a caller waiting for a token request in
    flight, a shutdown letting one land), advance the clock *step* seconds at a time.
    Fails when *call* still waits after *patience* fake seconds."""
    task = asyncio.ensure_future(call)
    started = clock.monotonic()
    await settle()
    while not task.done():
        if clock.monotonic() - started >= patience:
            task.cancel()
            msg = f"still waiting after {patience:g} s on the fake clock"
            raise AssertionError(msg)
        await clock.advance(step)
    return task.result()


@asynccontextmanager
async def lifespan(app: ASGIApp, clock: FakeClock) -> AsyncIterator[None]:
    """Run *app*'s ASGI lifespan (startup, then shutdown on exit), as uvicorn's
    ``lifespan="on"`` does; a failed startup or shutdown raises RuntimeError."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope: dict[str, Any] = {
        "type": "lifespan",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
        "state": {},
    }
    running = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    await drive(clock, _reply(running, outbox, "lifespan.startup"))
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await drive(clock, _reply(running, outbox, "lifespan.shutdown"))
        await running


async def _reply(running: asyncio.Future[None], outbox: asyncio.Queue[Message], phase: str) -> None:
    reply = asyncio.ensure_future(outbox.get())
    either: set[asyncio.Future[Any]] = {reply, running}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not reply.done():
        reply.cancel()
        running.result()  # the app's own exception, if it raised one
        msg = f"the app returned during {phase} without answering it"
        raise RuntimeError(msg)
    message = reply.result()
    if message["type"] != f"{phase}.complete":
        msg = f"{message['type']}: {message.get('message', '')}"
        raise RuntimeError(msg)


@dataclass
class InProcess:
    """A running broker: call it with ``client`` (or :meth:`get`, which keeps time moving
    while the broker makes the caller wait)."""

    clock: FakeClock
    idps: IdPs
    app: TokenFastPath
    """The fast path in front of FastAPI: ``.served``, ``.runtime`` as with a real server."""
    client: httpx.AsyncClient
    step: float = STEP

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """``GET path``; the clock advances only while the broker keeps the caller waiting."""
        return await drive(self.clock, self.client.get(path, **kwargs), step=self.step)

    async def eventually(
        self, condition: Callable[[], Awaitable[bool]], *, within: float, step: float | None = None
    ) -> None:
        """Advance the clock until *condition* holds; fail after *within* fake seconds."""
        deadline = self.clock.monotonic() + within
        while not await condition():
            if self.clock.monotonic() >= deadline:
                msg = f"condition not met within {within:g} s on the fake clock"
                raise AssertionError(msg)
            await self.clock.advance(step or self.step)


@asynccontextmanager
async def in_process(
    settings: BrokerSettings,
    idps: IdPs,
    *,
    rng: random.Random | None = None,
    step: float = STEP,
) -> AsyncIterator[InProcess]:
    """Start the broker for *settings* on ``idps.clock`` with *idps* as its way to the
    identity providers; stop it (its lifespan's shutdown) at the end. The refresh jitter
    comes from *rng* (default seeded, so every run takes the same steps)."""
    clock = idps.clock
    app = create_app(settings, clock=clock, rng=rng or random.Random(0), transport=idps)
    async with (
        lifespan(app, clock),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BROKER_URL) as client,
    ):
        await settle()  # the first token requests, as far as they go without time passing
        yield InProcess(clock, idps, app, client, step)


# -- the process's log, in-process ---------------------------------------------------------


@contextmanager
def process_log(settings: BrokerSettings) -> Iterator[io.StringIO]:
    """What ``broker serve`` with *settings* would write to stderr, captured in a StringIO.

    Calls :func:`broker.ops.logs.configure_logging` with *settings*' ``log_level`` and
    ``log_format`` as the CLI does before it starts the app; start the broker
    (:func:`in_process`) inside, and its lifespan puts the manager's SecretFilter on that
    handler as it does in the process (it takes it off again at shutdown). The test's own
    clients log their requests there too (httpx, at INFO), as callers in the process would.
    At the end the root, uvicorn and client-library loggers are put back as they were.
    """
    watched = [logging.getLogger(name) for name in (*UVICORN_LOGGERS, *CLIENT_LOGGERS)]
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in watched]
    stream = io.StringIO()
    handler = configure_logging(settings.log_level, settings.log_format, stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        handler.close()
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for lg, handlers, level, propagate in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


# -- the broker's work in threads -------------------------------------------------------------

THREAD_PATIENCE = 30.0
"""Real seconds :meth:`Threads.idle` waits for the broker's thread work before it fails the
test (a hung file system, say): a limit for failing, never a wait that passes."""


class Threads(concurrent.futures.ThreadPoolExecutor):
    """The event loop's default executor while :func:`threads` is in force: where
    ``asyncio.to_thread`` runs the broker's blocking file work (sink files, the state
    directory), in a real thread as in the server, so that a test can wait for that work
    (:meth:`idle`) instead of sleeping.

    :func:`settle` cannot see a thread: while one works the loop is idle, and its result
    arrives later by itself. One worker runs the jobs in the order given, so a job queued
    after them (the barrier :meth:`idle` sends) starts only once each earlier job has
    finished and handed its result to the loop.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="inprocess-to-thread")
        self.given = 0
        """Jobs the broker has given so far (read and written on the loop's thread only)."""

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        self.given += 1
        return super().submit(fn, *args, **kwargs)

    async def idle(self, *, rounds: int = 100) -> None:
        """Wait until every job given so far has finished and the loop has settled after
        it, again while that lets the broker give new ones (at most *rounds* times). The
        fake clock does not move meanwhile. It waits on the jobs themselves (the loop
        sleeps until the thread is done): no polling."""
        for _ in range(rounds):
            await settle()
            given = self.given
            barrier = asyncio.wrap_future(super().submit(_nothing))
            await asyncio.wait_for(barrier, THREAD_PATIENCE)
            await settle()
            if self.given == given:
                return
        msg = f"the broker kept giving thread work after {rounds} rounds"
        raise AssertionError(msg)


def _nothing() -> None:
    return None


@asynccontextmanager
async def threads() -> AsyncIterator[Threads]:
    """Make a :class:`Threads` the running loop's default executor (before the broker
    starts, so that its first sink write is one of the jobs). At the end it waits for the
    jobs left and puts a plain default executor back."""
    loop = asyncio.get_running_loop()
    work = Threads()
    loop.set_default_executor(work)
    try:
        yield work
    finally:
        await work.idle()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor())
        work.shutdown(wait=True)
