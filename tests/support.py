"""Test helpers: a fake clock and a broker served on a real socket."""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import heapq
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import httpx
import pytest

from broker.config.load import parse_config
from broker.config.settings import BrokerSettings
from broker.fakes.server import serve_in_thread
from broker.web.app import create_app
from broker.web.fastpath import TokenFastPath

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
BROKER = [sys.executable, "-m", "broker"]


class FakeClock:
    """A clock that moves only when a test calls :meth:`advance` (after trio's MockClock)."""

    def __init__(self, start: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(seconds, 0.0), next(self._seq), future))
        await future

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        waker = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
        return event.is_set()

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in deadline order and letting them run."""
        target = self._now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
            await settle()
        self._now = target
        await settle()


SETTLE_LIMIT = 100_000
"""Loop iterations :func:`settle` waits for the loop to go idle before it gives up loudly."""


async def settle(limit: int = SETTLE_LIMIT) -> None:
    """Let every ready task run until all are waiting again (MockTransport answers at once).

    Yields to the loop until, when this task runs again, nothing else is ready to run: no
    callback queued and no timer due. Everything an in-process test drives (MockTransport,
    ASGITransport, a FakeClock's sleepers) moves by callbacks alone, so that is the moment
    every task is waiting on something only the test can cause. A loop that is still busy
    after *limit* iterations (a task spinning on ``sleep(0)``) fails the test.

    asyncio has no public "is the loop idle" question: this reads CPython's private
    ``BaseEventLoop._ready`` (the deque of callbacks to run in this iteration) and
    ``_scheduled`` (the timer heap). Without them (another loop implementation, such as
    uvloop, or a future CPython) it refuses to guess rather than return early.
    """
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    scheduled = getattr(loop, "_scheduled", None)
    if not isinstance(ready, collections.deque) or not isinstance(scheduled, list):
        msg = f"settle() needs CPython's asyncio loop internals; {type(loop).__name__} lacks them"
        raise TypeError(msg)
    for _ in range(limit):
        await asyncio.sleep(0)
        # This task's own wake-up has been taken off the queue: what is left is other work.
        if not ready and not (scheduled and scheduled[0].when() <= loop.time()):
            return
    msg = f"the event loop did not go idle within {limit} iterations (a task never waits?)"
    raise AssertionError(msg)


def settings_from(yaml_text: str) -> BrokerSettings:
    return parse_config(yaml_text, source="test.yaml")


@contextmanager
def running_broker(settings: BrokerSettings) -> Iterator[httpx.Client]:
    """Serve the broker on 127.0.0.1 (lifespan on, real clock); yield a client for it."""
    with serving(settings) as (client, _):
        yield client


@contextmanager
def serving(settings: BrokerSettings) -> Iterator[tuple[httpx.Client, TokenFastPath]]:
    """As :func:`running_broker`, also yielding the fast path in front of the app, whose
    ``served`` tells which path answered and whose ``app.state`` holds the manager."""
    fast = create_app(settings)
    with (
        serve_in_thread(fast, lifespan="on") as base_url,
        httpx.Client(base_url=base_url, timeout=10) as client,
    ):
        yield client, fast


def wait_for(condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll *condition* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            msg = f"condition not met within {timeout} s"
            raise AssertionError(msg)
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Running:
    """A broker process and what it has printed so far (read by a background thread)."""

    proc: subprocess.Popen[str]
    chunks: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.chunks)


@contextmanager
def process(*args: str, env: dict[str, str] | None = None) -> Iterator[Running]:
    """Run the broker in the background; SIGTERM it at the end and require exit status 0.

    A test that kills the process itself (SIGKILL) skips the final SIGTERM.
    """
    proc = subprocess.Popen(
        [*BROKER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    running = Running(proc)
    assert proc.stdout is not None
    reader = threading.Thread(target=_drain, args=(proc.stdout, running.chunks), daemon=True)
    reader.start()
    watchdog = threading.Timer(90, proc.kill)  # a hung test must not hang CI
    watchdog.start()
    try:
        yield running
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            reader.join(timeout=5)
            assert proc.returncode == 0, running.output
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(timeout=5)
        proc.stdout.close()


def _drain(stream: IO[str], chunks: list[str]) -> None:
    for line in stream:
        chunks.append(line)


def ready(base: str, proc: subprocess.Popen[str]) -> bool:
    """True once the broker at *base* answers /readyz with 200; fails if it died."""
    if proc.poll() is not None:
        pytest.fail(f"broker exited early with status {proc.returncode}")
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@functools.cache
def generated_demo_keys() -> Path:
    """deploy/secrets/generate, run once per test process into a temp dir: the compose demos'
    keys, which git does not hold."""
    directory = Path(tempfile.mkdtemp(prefix="broker-demo-keys-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    subprocess.run(
        [str(ROOT / "deploy" / "secrets" / "generate"), str(directory)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return directory


def compose_secret_file(file: str) -> Path:
    """A compose secret's ``file:`` (``./deploy/secrets/...``): the generated key of that name
    when deploy/secrets/generate makes it, else the committed file."""
    generated = generated_demo_keys() / Path(file).name
    return generated if generated.exists() else ROOT / file


def secret_names(service: dict[str, object]) -> list[tuple[str, str]]:
    """A compose service's secrets as (source, target), short syntax or long."""
    found = []
    for entry in service.get("secrets", []) or []:  # type: ignore[attr-defined]
        if isinstance(entry, str):
            found.append((entry, entry))
        else:
            found.append((entry["source"], entry.get("target", entry["source"])))
    return found
