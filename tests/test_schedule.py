"""When to refresh and when to retry: pure functions over times, a policy and a random draw."""

from __future__ import annotations

import pytest

from broker.policy.schedule import RefreshSettings, alone_from, backoff_delay, refresh_delay

DEFAULT = RefreshSettings()
"""ratio 2/3, jitter 0.1, margin 60 s, min_delay 1 s, backoff 1 s .. 300 s."""

LATE = RefreshSettings(ratio=0.9, jitter=0.09)
"""A policy whose jittered target can fall inside the margin."""

EAGER = RefreshSettings(ratio=0.05, jitter=0.04, min_delay=5.0)
"""A policy whose jittered target can fall before min_delay."""


@pytest.mark.parametrize(
    ("now", "obtained_at", "expires_at", "policy", "draw", "expected"),
    [
        # Long tokens: ratio ± jitter of the lifetime, draw picks where.
        pytest.param(0, 0, 3600, DEFAULT, 0.0, 3600 * (2 / 3 - 0.1), id="1h-draw-0"),
        pytest.param(0, 0, 3600, DEFAULT, 0.5, 2400.0, id="1h-draw-half"),
        pytest.param(0, 0, 3600, DEFAULT, 0.999, 3600 * (2 / 3 + 0.0998), id="1h-draw-max"),
        pytest.param(500, 500, 4100, DEFAULT, 0.5, 2400.0, id="1h-at-other-now"),
        pytest.param(1500, 1000, 4600, DEFAULT, 0.5, 1900.0, id="1h-computed-later"),
        pytest.param(0, 0, 86400, DEFAULT, 0.5, 57600.0, id="1d-draw-half"),
        pytest.param(0, 0, 3600, RefreshSettings(jitter=0), 0.999, 2400.0, id="no-jitter"),
        # Clamp: never later than margin before expiry.
        pytest.param(0, 0, 3600, LATE, 0.0, 3600 * 0.81, id="late-policy-draw-0-unclamped"),
        pytest.param(0, 0, 300, LATE, 0.5, 240.0, id="late-policy-clamped-to-margin"),
        pytest.param(0, 0, 3600, LATE, 0.999, 3540.0, id="late-policy-draw-max-clamped"),
        pytest.param(0, 0, 300, RefreshSettings(margin=120), 0.5, 200.0, id="margin-over-third"),
        pytest.param(0, 0, 120, DEFAULT, 0.0, 120 * (2 / 3 - 0.1), id="2min-draw-0"),
        pytest.param(0, 0, 120, DEFAULT, 0.999, 80.0, id="2min-margin-is-a-third"),
        pytest.param(0, 0, 150, DEFAULT, 0.999, 100.0, id="150s-margin-is-a-third"),
        # Short tokens (1-2 s): still refreshed inside their lifetime, never spinning.
        pytest.param(0, 0, 2, DEFAULT, 0.0, 2 * (2 / 3 - 0.1), id="2s-draw-0"),
        pytest.param(0, 0, 2, DEFAULT, 0.5, 4 / 3, id="2s-draw-half"),
        pytest.param(0, 0, 2, DEFAULT, 0.999, 4 / 3, id="2s-draw-max"),
        pytest.param(0, 0, 1.5, DEFAULT, 0.999, 1.0, id="1.5s-draw-max"),
        pytest.param(0, 0, 1, DEFAULT, 0.0, 2 / 3 - 0.1, id="1s-draw-0"),
        pytest.param(0, 0, 1, DEFAULT, 0.5, 2 / 3, id="1s-draw-half"),
        pytest.param(0, 0, 1, DEFAULT, 0.999, 2 / 3, id="1s-draw-max"),
        # Nearly expired: at least min_delay, or half what is left.
        pytest.param(3550, 0, 3600, DEFAULT, 0.5, 1.0, id="past-margin-min-delay"),
        pytest.param(3590, 0, 3600, DEFAULT, 0.999, 1.0, id="10s-left-min-delay"),
        pytest.param(3599, 0, 3600, DEFAULT, 0.5, 0.5, id="1s-left-half-of-it"),
        pytest.param(3599.9, 0, 3600, DEFAULT, 0.5, 0.05, id="100ms-left-half-of-it"),
        pytest.param(0, 0, 100, EAGER, 0.0, 5.0, id="early-target-raised-to-min-delay"),
        pytest.param(0, 0, 100, EAGER, 0.999, 8.992, id="eager-target-above-min-delay"),
        pytest.param(0, 0, 6, EAGER, 0.0, 3.0, id="min-delay-at-most-half-remaining"),
        # Already expired: refresh now.
        pytest.param(3600, 0, 3600, DEFAULT, 0.5, 0.0, id="expires-now"),
        pytest.param(4000, 0, 3600, DEFAULT, 0.5, 0.0, id="expired"),
        pytest.param(10, 10, 10, DEFAULT, 0.5, 0.0, id="zero-lifetime"),
        pytest.param(10, 10, 5, DEFAULT, 0.5, 0.0, id="negative-lifetime"),
    ],
)
def test_refresh_delay(
    now: float,
    obtained_at: float,
    expires_at: float,
    policy: RefreshSettings,
    draw: float,
    expected: float,
) -> None:
    """The delay is ratio±jitter of the lifetime, clamped to margin and min_delay."""
    delay = refresh_delay(
        now=now, obtained_at=obtained_at, expires_at=expires_at, policy=policy, draw=draw
    )
    assert delay == pytest.approx(expected)


@pytest.mark.parametrize("lifetime", [0.01, 0.5, 1, 2, 5, 59, 60, 61, 180, 181, 3600, 86400])
@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.75, 0.999])
@pytest.mark.parametrize("policy", [DEFAULT, LATE, EAGER], ids=["default", "late", "eager"])
def test_fresh_token_refreshes_within_its_life(
    lifetime: float, draw: float, policy: RefreshSettings
) -> None:
    """A fresh token is refreshed no sooner than min_delay, no later than margin before expiry."""
    delay = refresh_delay(now=0, obtained_at=0, expires_at=lifetime, policy=policy, draw=draw)
    earliest = min(policy.min_delay, lifetime / 2)
    latest = lifetime - min(policy.margin, lifetime / 3)
    assert earliest - 1e-9 <= delay <= latest + 1e-9
    assert 0 < delay < lifetime


@pytest.mark.parametrize(
    ("obtained_at", "expires_at", "margin", "expected"),
    [
        pytest.param(0, 3600, 60, 3540, id="hour-token-last-margin"),
        pytest.param(100, 3700, 60, 3640, id="offset"),
        pytest.param(0, 180, 60, 120, id="three-margins"),
        pytest.param(0, 90, 60, 60, id="short-token-last-third"),
        pytest.param(0, 3, 60, 2, id="three-seconds"),
        pytest.param(0, 3600, 0, 3600, id="no-margin-at-expiry"),
        pytest.param(10, 10, 60, 10, id="zero-lifetime"),
        pytest.param(10, 5, 60, 5, id="negative-lifetime"),
    ],
)
def test_alone_from_is_where_a_refresh_is_planned_at_the_latest(
    obtained_at: float, expires_at: float, margin: float, expected: float
) -> None:
    """The last part of a token's life starts margin before expiry (a third for short ones):
    exactly the latest refresh_delay ever plans, so a planned refresh is never alone."""
    policy = RefreshSettings(margin=margin, jitter=0.0, ratio=0.99)
    start = alone_from(obtained_at=obtained_at, expires_at=expires_at, policy=policy)
    assert start == pytest.approx(expected)
    if expires_at - obtained_at > 2:
        planned = refresh_delay(
            now=obtained_at,
            obtained_at=obtained_at,
            expires_at=expires_at,
            policy=policy,
            draw=0.999,
        )
        assert obtained_at + planned <= start + 1e-9


@pytest.mark.parametrize(
    ("failures", "draw", "retry_after", "expected"),
    [
        # Full jitter: draw * step, step = 1 s * 2**(failures-1).
        pytest.param(1, 0.0, None, 0.0, id="first-draw-0"),
        pytest.param(1, 0.5, None, 0.5, id="first-draw-half"),
        pytest.param(1, 0.999, None, 0.999, id="first-draw-max"),
        pytest.param(2, 0.5, None, 1.0, id="second-draw-half"),
        pytest.param(2, 0.999, None, 1.998, id="second-draw-max"),
        pytest.param(4, 0.5, None, 4.0, id="fourth-draw-half"),
        pytest.param(9, 0.5, None, 128.0, id="ninth"),
        # Capped at backoff_max.
        pytest.param(10, 0.5, None, 150.0, id="tenth-capped"),
        pytest.param(10, 0.999, None, 299.7, id="tenth-capped-draw-max"),
        pytest.param(1000, 0.5, None, 150.0, id="thousandth-capped"),
        pytest.param(0, 0.5, None, 0.5, id="zero-failures-like-first"),
        pytest.param(-3, 0.5, None, 0.5, id="negative-failures-like-first"),
        # Retry-After is honoured when longer, up to backoff_max.
        pytest.param(1, 0.0, 30.0, 30.0, id="retry-after-longer"),
        pytest.param(3, 0.5, 0.0, 2.0, id="retry-after-zero"),
        pytest.param(1, 0.5, 0.1, 0.5, id="retry-after-shorter"),
        pytest.param(1, 0.0, 1000.0, 300.0, id="retry-after-capped"),
        pytest.param(10, 0.999, 200.0, 299.7, id="retry-after-below-backoff"),
    ],
)
def test_backoff_delay(
    failures: int, draw: float, retry_after: float | None, expected: float
) -> None:
    """Capped exponential backoff with full jitter; Retry-After is a floor."""
    delay = backoff_delay(failures=failures, policy=DEFAULT, draw=draw, retry_after=retry_after)
    assert delay == pytest.approx(expected)


@pytest.mark.parametrize(
    ("failures", "draw", "expected"),
    [
        pytest.param(1, 0.5, 1.0, id="first"),
        pytest.param(2, 0.5, 2.0, id="second"),
        pytest.param(3, 0.5, 4.0, id="third"),
        pytest.param(4, 0.5, 5.0, id="fourth-capped"),
        pytest.param(4, 0.999, 9.99, id="fourth-capped-draw-max"),
    ],
)
def test_backoff_delay_custom_policy(failures: int, draw: float, expected: float) -> None:
    """backoff_initial and backoff_max from the policy set the first step and the cap."""
    policy = RefreshSettings(backoff_initial=2.0, backoff_max=10.0)
    delay = backoff_delay(failures=failures, policy=policy, draw=draw)
    assert delay == pytest.approx(expected)


def test_backoff_doubles_until_capped() -> None:
    """Each failure doubles the delay for the same draw, until backoff_max."""
    delays = [backoff_delay(failures=n, policy=DEFAULT, draw=0.5) for n in range(1, 13)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 150, 150, 150]


@pytest.mark.parametrize("failures", [1, 2, 5, 9, 10, 50])
@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999])
def test_backoff_between_zero_and_step(failures: int, draw: float) -> None:
    """Every backoff lies in [0, step) with step = min(max, initial * 2**(n-1))."""
    step = min(DEFAULT.backoff_max, DEFAULT.backoff_initial * 2.0 ** (failures - 1))
    delay = backoff_delay(failures=failures, policy=DEFAULT, draw=draw)
    assert 0 <= delay < step
