"""The calendar that spaces planned token requests: pure, so table tests."""

from __future__ import annotations

import math

import pytest

from broker.engine.pacer import SLOT, StartCalendar


@pytest.mark.parametrize(
    ("bookings", "expected"),
    [
        # (now, wanted, max_shift) per booking -> the start each one gets
        pytest.param(
            [(0.0, 0.0, math.inf)] * 3, [0.0, 0.002, 0.004], id="a crowd gets one slot each"
        ),
        pytest.param(
            [(0.0, 0.0, math.inf), (0.0, 0.001, math.inf), (0.0, 0.010, math.inf)],
            [0.0, 0.002, 0.010],
            id="rounded up to the next free slot, and alone means not moved",
        ),
        pytest.param(
            [(0.0, 5.0, math.inf), (0.0, 1.0, math.inf), (0.0, 5.0, math.inf)],
            [5.0, 1.0, 5.002],
            id="booked ahead, in any order",
        ),
        pytest.param(
            [(0.0, 1.0, 0.0), (0.0, 1.0, 0.0), (0.0, 1.0, 0.003)],
            [1.0, 1.0, 1.002],
            id="a start that would move more than max_shift keeps its time, unbooked",
        ),
        pytest.param([(7.0, 3.0, math.inf)], [7.0], id="never in the past"),
    ],
)
def test_bookings(bookings: list[tuple[float, float, float]], expected: list[float]) -> None:
    calendar = StartCalendar()
    starts = [calendar.book(now, wanted, shift) for now, wanted, shift in bookings]
    assert starts == pytest.approx(expected)


def test_a_crowd_of_10000_is_spread_over_20_seconds() -> None:
    calendar = StartCalendar()
    starts = [calendar.book(0.0, 0.0) for _ in range(10_000)]
    assert starts[-1] == pytest.approx(9_999 * SLOT)
    assert len(set(starts)) == 10_000
    # Later crowds keep their spacing after old bookings are forgotten.
    later = [calendar.book(100.0, 100.0) for _ in range(3)]
    assert later == pytest.approx([100.0, 100.002, 100.004])


def test_no_slot_means_no_spacing() -> None:
    calendar = StartCalendar(slot=0)
    assert [calendar.book(0.0, 1.0) for _ in range(3)] == [1.0, 1.0, 1.0]
