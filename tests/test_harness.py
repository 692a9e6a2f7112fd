"""The test helpers' own promises: settle() waits exactly until the loop is idle."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import FakeClock, settle

pytestmark = pytest.mark.anyio


async def test_settle_runs_a_chain_of_handoffs_longer_than_any_fixed_round_count() -> None:
    """1,000 tasks each waking the next: all done when settle() returns, none left over."""
    events = [asyncio.Event() for _ in range(1001)]

    async def relay(index: int) -> None:
        await events[index].wait()
        events[index + 1].set()

    tasks = [asyncio.ensure_future(relay(i)) for i in range(1000)]
    await asyncio.sleep(0)  # every relay now waits: each hand-off takes a loop iteration
    events[0].set()
    await settle()
    assert events[-1].is_set()
    assert all(task.done() for task in tasks)


async def test_settle_returns_while_tasks_wait_on_the_fake_clock() -> None:
    """A sleeper on the fake clock is waiting, not busy: settle() returns; advance wakes it."""
    clock = FakeClock()
    sleeper = asyncio.ensure_future(clock.sleep(5))
    await settle()
    assert not sleeper.done()
    await clock.advance(5)
    assert sleeper.done()


async def test_settle_fails_loudly_when_the_loop_never_goes_idle() -> None:
    """A task that spins on sleep(0) forever is a bug in the test or the broker: say so."""

    async def spin() -> None:
        while True:  # noqa: ASYNC110  # busy on purpose: the bug settle() must report
            await asyncio.sleep(0)

    spinner = asyncio.ensure_future(spin())
    try:
        with pytest.raises(AssertionError, match="did not go idle within 50 iterations"):
            await settle(limit=50)
    finally:
        spinner.cancel()
