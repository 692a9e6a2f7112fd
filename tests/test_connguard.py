"""The connection guard in front of uvicorn: request-head deadlines and the connection cap.

Each test serves a small ASGI app with uvicorn and the guard on a real 127.0.0.1 socket in
the test's own event loop, and talks to it with raw asyncio streams, so every byte and
every close is the test's to choose. Timeouts are a few tenths of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from broker.config.load import parse_config
from broker.config.settings import LimitsSettings
from broker.server.connguard import ConnectionGate, connection_gate

pytestmark = [pytest.mark.anyio, pytest.mark.smoke]

HEAD_TIMEOUT = 0.3
SLACK = 0.25
"""How much later than due a close may come on a busy test machine."""
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


@dataclass
class App:
    """Answers ``ok``; ``GET /slow`` first waits until ``release`` is set; ``GET /big``
    answers 8 MiB, more than socket buffers hold."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/slow":
            self.started += 1
            await self.release.wait()
        body = b"x" * (8 << 20) if scope["path"] == "/big" else b"ok"
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Served:
    port: int
    gate: ConnectionGate
    app: App
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    """Every connection the test opened, closed at the end whatever happened."""

    async def connect(
        self, sock: socket.socket | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the server (over *sock*, connected already, if given)."""
        if sock is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        else:
            reader, writer = await asyncio.open_connection(sock=sock)
        self.writers.append(writer)
        return reader, writer


@contextlib.asynccontextmanager
async def guarded(
    *, cap: int = 100, keepalive: int = 5, gated_listener: bool = True
) -> AsyncIterator[Served]:
    """uvicorn with the guard on 127.0.0.1 (*gated_listener*: the cap decided at accept)."""
    gate = ConnectionGate(cap, HEAD_TIMEOUT)
    app = App()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sockets = gate.listeners([sock]) if gated_listener else [sock]
    config = uvicorn.Config(
        app,
        http=gate.protocol(),
        timeout_keep_alive=keepalive,
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign, assignment]
    task = asyncio.create_task(server.serve(sockets=sockets))
    served = Served(port, gate, app)
    try:
        await eventually(lambda: server.started)
        yield served
    finally:
        for writer in served.writers:
            writer.close()  # also frees an answer stuck on a caller that does not read
        app.release.set()
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        for listening in sockets:
            listening.close()


async def eventually(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Wait until *condition* holds (polled every 5 ms); fail after *limit* seconds."""
    async with asyncio.timeout(limit):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


async def closed_after(reader: asyncio.StreamReader, limit: float = 5.0) -> float:
    """Seconds until the server closes the connection (reads and drops what it sends)."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        try:
            while await reader.read(4096):
                pass
        except ConnectionResetError:
            pass
    return time.monotonic() - started


async def answer(reader: asyncio.StreamReader) -> bytes:
    """One response (this app's: headers and a 2-byte body)."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        return head + await reader.readexactly(2)


async def is_open(reader: asyncio.StreamReader) -> bool:
    """True if the server has not closed this connection (nothing to read within 50 ms)."""
    try:
        async with asyncio.timeout(0.05):
            return bool(await reader.read(1))
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    async with guarded() as served:
        reader, writer = await served.connect()
        waited = await closed_after(reader)
        writer.close()
        assert HEAD_TIMEOUT - 0.05 <= waited <= HEAD_TIMEOUT + SLACK
        assert served.gate.closed["timed_out"] == 1


async def test_a_head_trickling_in_is_closed_when_its_time_is_up_however_busy_it_keeps() -> None:
    async with guarded() as served:
        reader, writer = await served.connect()
        started = time.monotonic()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in REQUEST[:-2]:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.02)

        sender = asyncio.create_task(trickle())
        await closed_after(reader)
        waited = time.monotonic() - started
        sender.cancel()
        writer.close()
        assert HEAD_TIMEOUT - 0.05 <= waited <= HEAD_TIMEOUT + SLACK
        assert served.gate.closed["timed_out"] == 1


async def test_a_head_in_pieces_within_the_timeout_is_answered() -> None:
    async with guarded() as served:
        reader, writer = await served.connect()
        for piece in (REQUEST[:10], REQUEST[10:20], REQUEST[20:]):
            writer.write(piece)
            await asyncio.sleep(HEAD_TIMEOUT / 5)
        assert (await answer(reader)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        assert served.gate.closed["timed_out"] == 0


async def test_an_answer_that_takes_long_is_not_cut_by_the_header_timeout() -> None:
    async with guarded() as served:
        reader, writer = await served.connect()
        writer.write(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await asyncio.sleep(HEAD_TIMEOUT + SLACK)
        served.app.release.set()
        assert (await answer(reader)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        assert served.gate.closed["timed_out"] == 0


async def test_a_kept_alive_connections_next_head_is_timed_from_its_first_byte() -> None:
    async with guarded() as served:
        reader, writer = await served.connect()
        writer.write(REQUEST)
        await answer(reader)
        await asyncio.sleep(HEAD_TIMEOUT)  # idle: the keep-alive time (5 s) applies, not ours
        assert await is_open(reader)
        writer.write(REQUEST[:5])
        waited = await closed_after(reader)
        writer.close()
        assert HEAD_TIMEOUT - 0.1 <= waited <= HEAD_TIMEOUT + SLACK
        assert served.gate.closed["timed_out"] == 1


async def test_pipelined_requests_are_all_answered() -> None:
    async with guarded() as served:
        reader, writer = await served.connect()
        writer.write(REQUEST * 3)
        answers = [await answer(reader) for _ in range(3)]
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
        await asyncio.sleep(HEAD_TIMEOUT + SLACK)
        assert await is_open(reader)
        writer.close()
        assert served.gate.closed["timed_out"] == 0


async def test_a_caller_that_stops_reading_its_answers_is_reset_after_the_header_timeout() -> None:
    """Two pipelined requests for big answers, never read: the second answer waits for the
    first to drain, forever but for the guard."""
    async with guarded() as served:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.port))
        _, writer = await served.connect(sock)
        writer.write(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n" * 2)
        started = time.monotonic()
        await eventually(lambda: served.gate.closed["stalled"] == 1)
        waited = time.monotonic() - started
        await eventually(lambda: served.gate.open == 0)
        writer.close()
        assert waited <= HEAD_TIMEOUT + SLACK + 0.2  # + the time to fill the buffers
        assert served.gate.closed["timed_out"] == 0


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    async with guarded(keepalive=1) as served:
        reader, writer = await served.connect()
        writer.write(REQUEST)
        await answer(reader)
        waited = await closed_after(reader)
        writer.close()
        assert 0.9 <= waited <= 1.0 + SLACK


@pytest.mark.parametrize("gated_listener", [True, False], ids=["at-accept", "when-made"])
async def test_at_the_cap_the_connection_longest_without_a_request_makes_room(
    gated_listener: bool,
) -> None:
    async with guarded(cap=3, gated_listener=gated_listener) as served:
        oldest, oldest_w = await served.connect()
        older, older_w = await served.connect()
        used, used_w = await served.connect()
        await asyncio.sleep(0.02)
        older_w.write(REQUEST)  # connected before `used`, but has asked since
        await answer(older)
        newcomer, newcomer_w = await served.connect()
        newcomer_w.write(REQUEST)
        assert (await answer(newcomer)).startswith(b"HTTP/1.1 200 ")
        assert not await is_open(oldest)
        assert await is_open(older)
        assert await is_open(used)
        assert served.gate.closed["evicted"] == 1
        assert served.gate.open == 3
        for writer in (oldest_w, older_w, used_w, newcomer_w):
            writer.close()


@pytest.mark.parametrize("gated_listener", [True, False], ids=["at-accept", "when-made"])
async def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused(
    gated_listener: bool,
) -> None:
    async with guarded(cap=2, gated_listener=gated_listener) as served:
        busy = [await served.connect() for _ in range(2)]
        for _, writer in busy:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await eventually(lambda: served.app.started == 2)
        refused, refused_w = await served.connect()
        assert await closed_after(refused, limit=1) < 0.1
        assert served.gate.closed["refused"] == 1
        served.app.release.set()
        for reader, writer in busy:
            assert (await answer(reader)).startswith(b"HTTP/1.1 200 ")
            writer.close()
        refused_w.close()


async def test_a_burst_at_the_cap_waits_for_room_instead_of_being_refused() -> None:
    """More newcomers in one event-loop turn than connections may be closed to make room
    at once: the rest wait in the backlog for the next turn; none is refused."""
    async with guarded(cap=20) as served:
        for _ in range(20):
            await served.connect()  # idle: room can be made from them
        await eventually(lambda: served.gate.open == 20)
        burst = []
        for _ in range(30):  # connected by the kernel before the server runs again
            sock = socket.create_connection(("127.0.0.1", served.port))
            sock.setblocking(False)
            burst.append(sock)
        streams = [await served.connect(sock) for sock in burst]
        reader, writer = streams[-1]
        writer.write(REQUEST)
        assert (await answer(reader)).startswith(b"HTTP/1.1 200 ")
        assert served.gate.closed["refused"] == 0
        assert served.gate.closed["evicted"] >= 30


async def test_a_flood_never_holds_more_descriptors_than_the_cap_and_its_headroom() -> None:
    """300 connections at once against a cap of 50: the gate never counts more than
    cap + headroom open, the last ones are served, and nothing is left counted after."""
    async with guarded(cap=50) as served:
        seen: list[int] = []
        conns = []
        for _ in range(300):
            conns.append(await served.connect())
            seen.append(served.gate.open)
        reader, writer = conns[-1]
        writer.write(REQUEST)
        assert (await answer(reader)).startswith(b"HTTP/1.1 200 ")
        assert max(seen) <= 50 + 16
        for _, w in conns:
            w.close()
        await eventually(lambda: served.gate.open == 0)


async def test_the_guard_wraps_whichever_http_protocol_it_is_given() -> None:
    gate = ConnectionGate(10, HEAD_TIMEOUT)
    assert gate.protocol(H11Protocol).inner is H11Protocol
    assert gate.protocol().gate is gate


def test_the_gate_for_the_settings_uses_the_limits_section() -> None:
    settings = parse_config(
        "max_concurrent_requests: 4\n"
        "limits: {header_timeout: 2.5, max_connections: 77, fd_reserve: 10}\n"
        "providers:\n  x: {type: oauth2, token_url: 'http://127.0.0.1:9/t',"
        " grant: client_credentials, client_id: a, client_secret: b}\n"
    )
    gate = connection_gate(settings)
    assert gate.cap == 77
    assert gate.header_timeout == 2.5
    assert "at most 77 open at once" in gate.describe()


def test_the_limits_have_sane_defaults() -> None:
    limits = LimitsSettings()
    assert (limits.header_timeout, limits.keepalive_timeout) == (5.0, 5)
    assert (limits.max_connections, limits.fd_reserve) == (1024, 64)
