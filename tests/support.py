"""Test helpers: a fake clock and a broker served on a real socket."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import httpx

from broker.app import create_app
from broker.config import BrokerSettings, parse_config
from broker.fakes.server import serve_in_thread

T = TypeVar("T")


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


async def settle(rounds: int = 200) -> None:
    """Let every ready task run until all are waiting again (MockTransport answers at once)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def settings_from(yaml_text: str) -> BrokerSettings:
    return parse_config(yaml_text, source="test.yaml")


@contextmanager
def running_broker(settings: BrokerSettings) -> Iterator[httpx.Client]:
    """Serve the broker on 127.0.0.1 (lifespan on, real clock); yield a client for it."""
    with (
        serve_in_thread(create_app(settings), lifespan="on") as base_url,
        httpx.Client(base_url=base_url, timeout=10) as client,
    ):
        yield client


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
