"""The pacer that spreads planned token requests, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from broker.pacer import PLANNED_SPACING, Pacer
from tests.support import FakeClock

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("arrivals", "spacing", "expected"),
    [
        ([0.0, 0.0, 0.0], 0.002, [0.0, 0.002, 0.004]),  # a crowd: one slot each
        ([0.0, 0.001, 0.010], 0.002, [0.0, 0.002, 0.010]),  # late enough: at once
        ([0.0, 0.0, 0.0], 0.0, [0.0, 0.0, 0.0]),  # no spacing: no waiting
        ([5.0, 5.0], PLANNED_SPACING, [5.0, 5.0 + PLANNED_SPACING]),
    ],
)
async def test_waiters_get_slots_a_spacing_apart_in_arrival_order(
    arrivals: list[float], spacing: float, expected: list[float]
) -> None:
    clock = FakeClock(start=0.0)
    pacer = Pacer(clock, spacing)
    passed: list[tuple[int, float]] = []

    async def waiter(index: int, arrival: float) -> None:
        await clock.sleep(arrival)
        await pacer.wait()
        passed.append((index, clock.monotonic()))

    tasks = [asyncio.create_task(waiter(i, at)) for i, at in enumerate(arrivals)]
    await clock.advance(max(expected) + 1.0)
    await asyncio.gather(*tasks)
    assert [i for i, _ in passed] == list(range(len(arrivals)))
    assert [at for _, at in passed] == pytest.approx(expected)


async def test_a_cancelled_waiter_does_not_hold_up_the_next() -> None:
    clock = FakeClock(start=0.0)
    pacer = Pacer(clock, 1.0)
    await pacer.wait()  # slot 0
    cancelled = asyncio.create_task(pacer.wait())  # slot 1
    await asyncio.sleep(0)
    cancelled.cancel()
    later = asyncio.create_task(pacer.wait())  # slot 2: its slot stays where it was reserved
    await clock.advance(1.5)
    assert not later.done()
    await clock.advance(0.5)
    assert later.done()
    assert cancelled.cancelled()
