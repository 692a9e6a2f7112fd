"""Table tests of the pure per-provider rules: provider states and the caller bucket."""

from __future__ import annotations

import pytest

from broker.core.errors import FailureKind
from broker.core.tokens import matches_etag, place_token, rfc3339, token_etag
from broker.policy.states import CallerBucket, Outcome, ProviderState, provider_state


@pytest.mark.parametrize(
    ("outcome", "servable", "needs_login", "expected"),
    [
        (None, False, False, "starting"),
        ("success", True, False, "ready"),
        (FailureKind.TRANSIENT, True, False, "degraded"),
        (FailureKind.REJECTED, True, False, "degraded"),
        ("success", False, False, "expired"),
        (FailureKind.TRANSIENT, False, False, "failing"),
        (FailureKind.REJECTED, False, False, "rejected"),
        (FailureKind.MISCONFIGURED, False, False, "misconfigured"),
        (FailureKind.REJECTED, False, True, "needs_login"),
        (None, False, True, "needs_login"),
    ],
)
def test_provider_state(
    outcome: Outcome, servable: bool, needs_login: bool, expected: ProviderState
) -> None:
    """starting only before any outcome; afterwards the state says what is true now."""
    assert provider_state(outcome=outcome, servable=servable, needs_login=needs_login) == expected


@pytest.mark.parametrize(
    ("outcome", "servable", "expected"),
    [
        ("success", True, "degraded"),
        (None, True, "degraded"),
        (FailureKind.TRANSIENT, True, "degraded"),
        ("success", False, "expired"),
        (FailureKind.TRANSIENT, False, "failing"),
    ],
)
def test_a_failing_sink_degrades_a_serving_provider(
    outcome: Outcome, servable: bool, expected: ProviderState
) -> None:
    """The callers that read the sink file are not served: degraded, not ready; a provider
    that serves nobody says why it does not, as before."""
    state = provider_state(outcome=outcome, servable=servable, needs_login=False, sink_failing=True)
    assert state == expected


@pytest.mark.parametrize(
    ("takes_at", "expected"),
    [
        # A burst of 3, then one every 10 s.
        ([0, 0, 0, 0], [0, 0, 0, 10]),
        ([0, 0, 0, 5], [0, 0, 0, 5]),
        ([0, 0, 0, 10, 10], [0, 0, 0, 0, 10]),
        # Allowances come back one per interval, never beyond the burst.
        ([0, 0, 0, 1000, 1000, 1000, 1000], [0, 0, 0, 0, 0, 0, 10]),
        # A refusal does not use anything up.
        ([0, 0, 0, 1, 2, 10], [0, 0, 0, 9, 8, 0]),
        # Time that runs backwards (it cannot on a monotonic clock) refills nothing.
        ([5, 5, 5, 4], [0, 0, 0, 10]),
    ],
)
def test_caller_bucket(takes_at: list[float], expected: list[float]) -> None:
    bucket = CallerBucket(burst=3, interval=10.0)
    assert [bucket.take(at) for at in takes_at] == pytest.approx(expected)


def test_etag_names_a_token_without_revealing_it() -> None:
    """Same token and key, same tag; another token or key, another tag; never the token."""
    key = b"k" * 32
    tag = token_etag(key, "token-1")
    assert tag == token_etag(key, "token-1")
    assert tag != token_etag(key, "token-2")
    assert tag != token_etag(b"j" * 32, "token-1")
    assert "token-1" not in tag
    assert tag[0] == tag[-1] == '"'


@pytest.mark.parametrize(
    ("presented", "matches"),
    [
        ("{tag}", True),
        ("{bare}", True),
        ("W/{tag}", True),
        ('"x", {tag}', True),
        ("*", False),
        ("", False),
        ('"other"', False),
    ],
)
def test_if_match_forms(presented: str, matches: bool) -> None:
    tag = token_etag(b"k" * 32, "token-1")
    value = presented.format(tag=tag, bare=tag.strip('"'))
    assert matches_etag(tag, value) is matches


@pytest.mark.parametrize(
    ("sent_wall", "lifetime", "expires_text"),
    [
        (1_800_000_000.0, 3600.0, "2027-01-15T09:00:00.000Z"),
        (1_800_000_000.1234, 60.0, "2027-01-15T08:01:00.123Z"),
        (1_800_000_000.9999, 1.0, "2027-01-15T08:00:01.999Z"),
    ],
)
def test_a_token_expires_at_the_millisecond_it_states(
    sent_wall: float, lifetime: float, expires_text: str
) -> None:
    """Rounded down, on both clocks alike: never served after the expires_at shown."""
    token = place_token(
        "t",
        sent_at=100.0,
        sent_at_wall=sent_wall,
        lifetime=lifetime,
        etag_key=b"k",
        serve_min_remaining=1.0,
    )
    assert token.expires_at_text == expires_text
    assert token.expires_at - 100.0 <= lifetime
    assert token.expires_at_wall - sent_wall == pytest.approx(token.expires_at - 100.0)
    assert rfc3339(token.expires_at_wall, millis=True) == expires_text


def test_serving_floor() -> None:
    """Served while at least serve_min_remaining is left; expires_in never below 1."""
    token = place_token(
        "t", sent_at=0.0, sent_at_wall=0.0, lifetime=10.0, etag_key=b"k", serve_min_remaining=1.0
    )
    assert token.servable(9.0)
    assert token.expires_in(9.0) == 1
    assert not token.servable(9.001)
    assert token.servable(4.0, min_valid=6)
    assert not token.servable(4.0, min_valid=6.5)
