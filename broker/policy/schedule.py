"""When to refresh and when to retry. Pure functions; random draws are passed in."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RefreshSettings(BaseModel):
    """When to refresh a token, as fractions of its lifetime and seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ratio: float = Field(2 / 3, gt=0, lt=1)
    """Refresh at this fraction of the token's lifetime."""
    jitter: float = Field(0.1, ge=0, lt=0.5)
    """Plus or minus this fraction of the lifetime, at random, so that providers
    and replicas do not refresh in lockstep."""
    margin: float = Field(60.0, ge=0)
    """Never refresh later than this many seconds before expiry (for short
    tokens at most a third of their lifetime)."""
    min_delay: float = Field(1.0, ge=0)
    """Never refresh sooner than this after the previous token arrived
    (for short tokens at most half their lifetime)."""
    backoff_initial: float = Field(1.0, gt=0)
    """First retry delay after a failed token request; doubles each time."""
    backoff_max: float = Field(300.0, gt=0)
    """Longest retry delay."""
    caller_burst: int = Field(10, ge=1, le=1000)
    """Token requests that callers may trigger in a row (``min_valid`` fetches,
    forced refreshes) before the rate limit applies; planned refreshes are not counted."""
    caller_interval: float = Field(10.0, gt=0)
    """Seconds per caller-triggered token request once the burst is spent (one
    allowance comes back every this many seconds)."""
    serve_min_remaining: float = Field(1.0, ge=1)
    """A token with less than this many seconds left is never served (it counts as
    expired): every answer's ``expires_in`` is at least this."""


def refresh_delay(
    *,
    now: float,
    obtained_at: float,
    expires_at: float,
    policy: RefreshSettings,
    draw: float,
) -> float:
    """Seconds from *now* until the token should be refreshed.

    The target is ``policy.ratio`` of the lifetime (2/3 by default, as Vault's
    lifetime watcher does), moved by up to ``policy.jitter`` of the lifetime
    either way (*draw* in [0, 1) picks where), so that many providers or
    replicas do not hit an identity provider in the same second. Two clamps
    then apply, in this order of priority:

    * never later than ``margin`` before expiry (a third of the lifetime for
      tokens shorter than three margins), so a slow or failed refresh still
      has time to be retried while the old token is valid;
    * never sooner than ``min_delay`` after now (half the remaining time for
      very short tokens), so a token that arrives nearly expired cannot make
      the broker spin.
    """
    lifetime = max(expires_at - obtained_at, 0.0)
    remaining = expires_at - now
    if remaining <= 0:
        return 0.0
    fraction = policy.ratio + policy.jitter * (2.0 * draw - 1.0)
    target = obtained_at + lifetime * fraction
    latest = expires_at - min(policy.margin, lifetime / 3.0)
    at = min(target, latest)
    earliest = now + min(policy.min_delay, remaining / 2.0)
    return max(at, earliest) - now


def alone_from(*, obtained_at: float, expires_at: float, policy: RefreshSettings) -> float:
    """When a token enters the last part of its life, where a broker that cannot reach the
    store it shares with other brokers may log in on its own (see
    :class:`broker.engine.token_request.TokenRequester`).

    That part begins where :func:`refresh_delay` plans a refresh at the latest: ``margin``
    before expiry, a third of the lifetime for short tokens. Until then a shared store's
    outage only delays the refresh (the token is still good); from then on, waiting for the
    store would let the token run out while the identity provider would answer.
    """
    lifetime = max(expires_at - obtained_at, 0.0)
    return expires_at - min(policy.margin, lifetime / 3.0)


def backoff_delay(
    *,
    failures: int,
    policy: RefreshSettings,
    draw: float,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before retry number *failures* (1 = the first retry).

    Capped exponential backoff with full jitter (a uniform draw between 0 and
    the step, where the step is ``backoff_initial * 2**(failures-1)`` capped at
    ``backoff_max``): of the usual jitter schemes it spreads a crowd of
    retrying clients best and sends the fewest requests to a provider that is
    down. A ``Retry-After`` from the identity provider is honoured when it
    asks for longer (up to ``backoff_max``).
    """
    exponent = min(max(failures - 1, 0), 62)
    step = min(policy.backoff_max, policy.backoff_initial * 2.0**exponent)
    delay = step * draw
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.backoff_max))
    return delay
