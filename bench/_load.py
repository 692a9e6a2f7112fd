"""A small open-loop HTTP/1.1 load generator on raw asyncio streams (keep-alive, GET only).

Cheaper per request than httpx, so on a 2-core machine the measuring client steals less CPU
from the server it measures. Each connection sends at fixed intervals (``conns / rate``);
latency is measured from the *intended* send time, so a stall of the server is counted in
full (no coordinated omission). A ticker records the client's own event-loop lag so that a
starved client can be told apart from a slow server.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Sample:
    intended: float
    """Wall time (time.time()) the request was due."""
    sent: float
    """Wall time it was actually written."""
    latency: float
    """Seconds from *intended* to the complete response."""
    status: int
    body: bytes


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    lag: list[tuple[float, float]] = field(default_factory=list)
    """(wall time, seconds the client's loop woke up late) every 10 ms."""
    errors: int = 0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _connection(
    host: str,
    port: int,
    path_for: Callable[[], str],
    interval: float,
    start: float,
    end: float,
    keep_body: bool,
    result: LoadResult,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        due = start
        while due < end:
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.time()
            request = f"GET {path_for()} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
            try:
                writer.write(request.encode())
                status, body = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                due += interval
                continue
            done = time.time()
            sample = Sample(due, sent, done - due, status, body if keep_body else b"")
            result.samples.append(sample)
            due += interval
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _ticker(end: float, result: LoadResult, tick: float = 0.01) -> None:
    while (now := time.time()) < end:
        await asyncio.sleep(tick)
        result.lag.append((now, max(time.time() - now - tick, 0.0)))


async def open_loop(
    host: str,
    port: int,
    path_for: Callable[[], str],
    *,
    rate: float,
    conns: int,
    seconds: float,
    keep_body: bool = False,
    start: float | None = None,
) -> LoadResult:
    """Send *rate* requests per second for *seconds* over *conns* keep-alive connections."""
    result = LoadResult()
    begin = (start if start is not None else time.time()) + 0.05
    end = begin + seconds
    interval = conns / rate
    jitter = random.Random(7)
    tasks = [
        _connection(
            host,
            port,
            path_for,
            interval,
            begin + interval * i / conns + jitter.random() * 1e-4,
            end,
            keep_body,
            result,
        )
        for i in range(conns)
    ]
    await asyncio.gather(_ticker(end, result), *tasks)
    result.samples.sort(key=lambda s: s.intended)
    return result
