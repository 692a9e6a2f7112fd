"""The real clock's wait: an event or a timeout, without sleeping in the test."""

from __future__ import annotations

import asyncio

import pytest

from broker.core.clock import SystemClock, measure_skew

pytestmark = pytest.mark.anyio


async def test_wait_returns_true_when_the_event_is_set_before_the_timeout() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_soon(event.set)
    assert await SystemClock().wait(event, 3600) is True


async def test_wait_returns_true_at_once_for_an_event_already_set() -> None:
    event = asyncio.Event()
    event.set()
    assert await SystemClock().wait(event, 0) is True


@pytest.mark.parametrize("seconds", [0, -5])
async def test_wait_times_out_and_returns_false(seconds: float) -> None:
    assert await SystemClock().wait(asyncio.Event(), seconds) is False


async def test_wait_adds_no_task() -> None:
    """Between refreshes every provider waits like this: no task per wait."""
    event = asyncio.Event()
    before = len(asyncio.all_tasks())
    waiting = asyncio.ensure_future(SystemClock().wait(event, 3600))
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before + 1  # the waiter itself, nothing more
    event.set()
    assert await waiting is True


NOW = 1_795_576_447.0  # Wed, 25 Nov 2026 03:14:07 GMT


@pytest.mark.parametrize(
    ("date_header", "expected"),
    [
        (None, None),
        ("", None),
        ("yesterday", None),
        ("Wed, 25 Nov 2026 03:14:07 GMT", 0.0),
        ("Wed, 25 Nov 2026 03:14:08 GMT", 0.0),  # under SKEW_THRESHOLD: Date's resolution
        ("Wed, 25 Nov 2026 03:14:37 GMT", 30.0),
        ("Wed, 25 Nov 2026 03:13:37 GMT", -30.0),
        ("Wed, 25 Nov 2026 03:14:37 -0000", 30.0),  # no zone: HTTP dates are GMT
        ("Wed, 25 Nov 2026 04:14:37 +0100", 30.0),
    ],
)
def test_measure_skew(date_header: str | None, expected: float | None) -> None:
    assert measure_skew(date_header, NOW) == expected
