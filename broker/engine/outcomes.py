"""What the end of a token request does to its provider: counters, the last outcome, the
retry plan after a failure, and the log lines (``token_refreshed``,
``token_request_failed``, ``state_changed``)."""

from __future__ import annotations

import logging
import random

from broker.core.clock import Clock
from broker.core.errors import FailureCode, FailureKind, TokenEndpointError
from broker.core.tokens import Token
from broker.engine.provider import Provider, alone_from_at
from broker.policy.schedule import backoff_delay
from broker.policy.states import ProviderState

log = logging.getLogger("broker.manager")

SLOW_RETRY_KINDS = frozenset({FailureKind.REJECTED, FailureKind.MISCONFIGURED})
"""Failures that retrying soon cannot fix: they are retried only every ``backoff_max``."""


class OutcomeRecorder:
    def __init__(self, clock: Clock, rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng

    def success(self, provider: Provider, token: Token, reason: str, took: float) -> None:
        before = provider.state(self._clock.monotonic())
        provider.token = token
        provider.generation += 1
        provider.refreshes += 1
        provider.consecutive_failures = 0
        provider.outcome = "success"
        provider.retry_at = None
        provider.needs_login = False
        provider.jitter_draw = self._rng.random()
        provider.last_refresh_wall = self._clock.wall()
        log.info(
            "%s: new token (%s) valid for %.0f s, took %.0f ms",
            provider.name,
            reason,
            token.lifetime,
            took * 1000,
            extra={
                "event": "token_refreshed",
                "provider": provider.name,
                "reason": reason,
                "duration_ms": round(took * 1000, 1),
                "expires_in": round(token.lifetime),
            },
        )
        self._state_change(provider, before)

    def failure(self, provider: Provider, exc: TokenEndpointError) -> None:
        before = provider.state(self._clock.monotonic())
        provider.failures += 1
        provider.consecutive_failures += 1
        provider.outcome = exc.kind
        provider.last_error = exc
        provider.last_error_wall = self._clock.wall()
        if exc.kind in SLOW_RETRY_KINDS:
            # Retrying refused credentials or a wrong URL soon will not help (and
            # can lock the account); retry slowly so a fixed config heals on its own.
            delay = provider.policy.backoff_max
        else:
            delay = backoff_delay(
                failures=provider.consecutive_failures,
                policy=provider.policy,
                draw=self._rng.random(),
                retry_after=exc.retry_after,
            )
        now = self._clock.monotonic()
        if exc.code == FailureCode.STORE_UNAVAILABLE and provider.protocol.can_login:
            # The shared store is out, and this provider may log in without it once its
            # token is in the last part of its life: retry no later than that.
            delay = min(delay, max(alone_from_at(provider) - now, 0.0))
        provider.retry_at = now + delay
        servable = provider.servable(self._clock.monotonic())
        log.warning(
            "%s: token request failed: %s [%s]; retry in %.1f s%s",
            provider.name,
            exc.message,
            exc.code,
            delay,
            "; still serving the current token" if servable else "",
            extra={
                "event": "token_request_failed",
                "provider": provider.name,
                "error": exc.code,
                "kind": exc.kind.value,
                "status": exc.status,
                "retry_in_s": round(delay, 1),
            },
        )
        self._state_change(provider, before)

    def _state_change(self, provider: Provider, before: ProviderState) -> None:
        after = provider.state(self._clock.monotonic())
        if after != before:
            log.info(
                "%s: state %s -> %s",
                provider.name,
                before,
                after,
                extra={
                    "event": "state_changed",
                    "provider": provider.name,
                    "from": before,
                    "to": after,
                },
            )
