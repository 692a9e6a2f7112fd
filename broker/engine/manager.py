"""The token manager: the refresh engine's tasks and its callers' side.

For each provider it keeps the current token in memory and runs one
background task that refreshes it ahead of expiry (see
:func:`broker.policy.schedule.refresh_delay`) and retries failures with backoff.
Callers read the token synchronously; they wait only when no token fit for
them exists (cold start, ``min_valid``, forced refresh), and then every
concurrent caller shares one request to the identity provider (single flight).

The parts it drives: :mod:`broker.engine.provider` (each provider's state),
:mod:`broker.engine.token_request` (one request to an identity provider, the only code that
talks to one), :mod:`broker.engine.outcomes` (what a request's end does to its provider),
:mod:`broker.engine.sink_keeper` (sink files), :mod:`broker.engine.refusals` (what a caller is told
when no token can be had) and :mod:`broker.engine.store` (where tokens live beyond memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable

import httpx

from broker.config.settings import BrokerSettings
from broker.core.clock import Clock
from broker.core.errors import (
    ErrorCode,
    FailureCode,
    FailureKind,
    TokenEndpointError,
    TokenUnavailableError,
    UnknownProviderError,
)
from broker.core.sanitize import one_line, shortened
from broker.core.tokens import Token, matches_etag
from broker.engine.announcements import AnnouncementListener
from broker.engine.browser_login import BrowserLogins
from broker.engine.outcomes import OutcomeRecorder
from broker.engine.pacer import StartCalendar
from broker.engine.provider import Provider, max_shift, new_provider, next_delay
from broker.engine.refusals import rate_limited, unavailable, unsatisfiable
from broker.engine.sink_keeper import SinkKeeper
from broker.engine.store import LocalStore, StoreStatus, TokenStore
from broker.engine.tasks import Background
from broker.engine.token_request import TokenRequester
from broker.ops.metrics import Metrics, ProviderSnapshot
from broker.policy.schedule import RefreshSettings
from broker.policy.states import CallerBucket

log = logging.getLogger("broker.manager")

SHOWN_NAME_LENGTH = 64
"""How much of an unknown provider name an error echoes: a real name has at most 63 characters."""


class TokenManager:
    """Keeps one fresh token per configured provider."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client: httpx.AsyncClient,
        clock: Clock,
        rng: random.Random | None = None,
        store: TokenStore | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self._client = client
        self._clock = clock
        self._store: TokenStore = store if store is not None else LocalStore()
        rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        self._settings = settings
        self._calendar = StartCalendar()
        self._requester = TokenRequester(
            client=client,
            clock=clock,
            store=self._store,
            metrics=self.metrics,
            max_concurrent_requests=settings.max_concurrent_requests,
        )
        self._outcomes = OutcomeRecorder(clock, rng)
        self.background = Background()
        """Owns every task the engine starts (and the reloader's): one shutdown for all."""
        self._sinks = SinkKeeper(clock, self.background, self.metrics)
        self.providers: dict[str, Provider] = {
            name: new_provider(name, settings) for name in settings.providers
        }
        self.logins = BrowserLogins(
            client=client,
            clock=clock,
            requester=self._requester,
            outcomes=self._outcomes,
            sinks=self._sinks,
            providers=lambda: self.providers,
            spawn=lambda work, name: self.background.spawn(work, name=name),
        )
        """A person's logins (``broker login``): in a browser, or with a refresh token."""
        self._requester.prepare = self.logins.ensure_endpoints

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start one refresh task per provider; each fetches its first token at once."""
        for provider in self.providers.values():
            self._sinks.check(provider)
            self.metrics.watch_provider(
                provider.name, self._snapshot_fn(provider.name), sinks=bool(provider.sinks)
            )
            self._start_task(provider)
        if self._store.shared:
            # One listener for all providers: what another broker publishes is served here
            # within milliseconds, and this broker's next refresh starts from it.
            listener = AnnouncementListener(
                store=self._store,
                clock=self._clock,
                providers=lambda: self.providers,
                requester=self._requester,
                outcomes=self._outcomes,
                sinks=self._sinks,
            )
            self.background.spawn(listener.run(), name="announcements")

    def _start_task(self, provider: Provider) -> None:
        provider.refresh_loop = self.background.spawn(
            self._maintain(provider), name=f"refresh:{provider.name}"
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the refresh tasks; let token requests in flight finish (up to *grace* s);
        then end every other background task (sink expiries, reloads).

        A request in flight may be a refresh whose answer rotates the refresh
        token: cancelling it could lose the only valid one, so it gets time to land.
        """
        await self.background.cancel(self.background.named("refresh:"))
        inflight = self.background.named("fetch:")
        if inflight:
            await asyncio.wait(inflight, timeout=grace)
        await self.background.close()

    async def update(self, settings: BrokerSettings) -> dict[str, list[str]]:
        """Apply a reloaded config: unchanged providers keep their tokens and schedules.

        A provider whose only change is its ``refresh`` policy keeps its token
        and is replanned under the new policy (``retuned``). Returns the
        provider names that were ``added``, ``removed``, ``changed``,
        ``retuned`` and ``kept``.
        """
        old = self.providers
        summary: dict[str, list[str]] = {
            "added": [],
            "removed": [],
            "changed": [],
            "retuned": [],
            "kept": [],
        }
        for name in [n for n in old if n not in settings.providers]:
            await self._retire(name)
            self.metrics.forget_provider(name)
            summary["removed"].append(name)
        for name, config in settings.providers.items():
            current = old.get(name)
            policy = settings.refresh_for(name)
            if current is not None and current.config == config:
                if current.policy == policy:
                    summary["kept"].append(name)
                else:
                    self._retune(current, policy)
                    summary["retuned"].append(name)
                continue
            if current is not None:
                await self._retire(name)
            provider = new_provider(name, settings)
            self.providers[name] = provider
            self._sinks.check(provider)
            self.metrics.watch_provider(name, self._snapshot_fn(name), sinks=bool(provider.sinks))
            self._start_task(provider)
            summary["changed" if current is not None else "added"].append(name)
        self._settings = settings
        return summary

    def _retune(self, provider: Provider, policy: RefreshSettings) -> None:
        """A new refresh policy for a provider whose login did not change."""
        provider.policy = policy
        provider.bucket = CallerBucket(policy.caller_burst, policy.caller_interval)
        if provider.token is not None:
            provider.token = dataclasses.replace(
                provider.token, serve_min_remaining=policy.serve_min_remaining
            )
        provider.wake.set()  # plan the next refresh under the new policy

    async def _retire(self, name: str) -> None:
        provider = self.providers.pop(name)
        await self.background.cancel(
            (provider.refresh_loop, provider.inflight, *(s.expiry for s in provider.sinks))
        )

    def _snapshot_fn(self, name: str) -> Callable[[], ProviderSnapshot | None]:
        """Reads whichever Provider object holds *name* at scrape time (reload swaps them)."""

        def snapshot() -> ProviderSnapshot | None:
            provider = self.providers.get(name)
            return provider.snapshot(self._clock.monotonic()) if provider is not None else None

        return snapshot

    def secret_values(self) -> list[str]:
        """Every secret and token the broker holds now, for the log SecretFilter.

        Values under 8 characters are left out: they are not real secrets (Aerion's
        default client secret is "public") and redacting them would mangle words.
        """
        values = [v for provider in self.providers.values() for v in provider.secret_values()]
        return [value for value in values if len(value) >= 8]

    # -- what callers use ---------------------------------------------------

    def get(self, name: str) -> Provider:
        try:
            return self.providers[name]
        except KeyError:
            # The name is the caller's text: echo only a short, printable prefix of it.
            shown = shortened(one_line(name), SHOWN_NAME_LENGTH)
            msg = f"no provider named {shown!r} is configured"
            raise UnknownProviderError(msg) from None

    def now(self) -> float:
        return self._clock.monotonic()

    def wall(self) -> float:
        return self._clock.wall()

    async def wait_for(self, event: asyncio.Event, seconds: float) -> bool:
        """Whether *event* was set within *seconds* of the engine's clock."""
        return await self._clock.wait(event, max(seconds, 0.0))

    def store_status(self) -> StoreStatus:
        """Where the token store stands (for the status endpoints)."""
        return self._store.status()

    @property
    def settings(self) -> BrokerSettings:
        """The settings in force (the last ones :meth:`update` applied)."""
        return self._settings

    def current(self, name: str, min_valid: float = 0.0) -> Token | None:
        """The token to serve right now without waiting, or None. Never an expired one."""
        token = self.get(name).token
        if token is not None and token.servable(self._clock.monotonic(), min_valid):
            return token
        return None

    async def token(self, name: str, min_valid: float = 0.0) -> Token:
        """A token valid for at least *min_valid* more seconds, fetching one if needed.

        Without a servable token this joins (or starts) the provider's fetch.
        A fetch only because the servable token has less than *min_valid* left
        is caller-triggered: it draws from the provider's rate limit.
        """
        provider = self.get(name)
        now = self._clock.monotonic()
        token = provider.token
        if token is not None and token.servable(now, min_valid):
            return token
        if token is not None and min_valid > 0 and token.lifetime <= min_valid:
            # This identity provider's tokens never live that long: asking it
            # again cannot help, and would let a caller hammer it.
            msg = (
                f"provider {name!r} issues tokens that live {token.lifetime:.0f} s;"
                f" min_valid={min_valid:.0f} cannot be met"
            )
            raise unsatisfiable(msg)
        fresh = await self._fetch_for_caller(
            provider, reason="min_valid" if provider.servable(now) else "on demand"
        )
        if not fresh.servable(self._clock.monotonic(), min_valid):
            msg = f"provider {name!r} returned a token valid for less than {min_valid:.0f} s"
            raise unsatisfiable(msg)
        return fresh

    async def force_refresh(self, name: str, rejected: str | None = None) -> Token:
        """A token other than the one a caller's API just refused.

        *rejected* is that token's ETag (``If-Match``). If a newer token than
        the rejected one exists, it is the answer at once: a crowd of callers
        that saw the same 401 causes one request to the identity provider, not
        one each. Otherwise this joins the fetch in flight or starts one (rate
        limited). When no new token can be had now (backoff, a failed fetch), a
        still-valid current token is the answer, unless it is the rejected one.
        """
        provider = self.get(name)
        token = provider.token
        now = self._clock.monotonic()
        if (
            rejected is not None
            and token is not None
            and token.servable(now)
            and not matches_etag(token.etag, rejected)
        ):
            return token
        try:
            fresh = await self._fetch_for_caller(provider, reason="forced")
        except TokenUnavailableError as exc:
            current = provider.token
            if (
                exc.status == 503
                and exc.code != ErrorCode.NEEDS_LOGIN
                and current is not None
                and current.servable(self._clock.monotonic())
                and (rejected is None or not matches_etag(current.etag, rejected))
            ):
                return current  # answered like a GET; X-Broker-Refresh-Failed says why
            raise
        if rejected is not None and matches_etag(fresh.etag, rejected):
            msg = f"provider {name!r}: the identity provider issued the refused token again"
            raise TokenUnavailableError(msg, retry_after=self._retry_after(provider))
        return fresh

    # -- single flight ------------------------------------------------------

    async def _fetch_for_caller(self, provider: Provider, *, reason: str) -> Token:
        """Join the provider's fetch in flight, or start one for a caller.

        A caller never starts a fetch while the provider needs a login or backs
        off (an outage must not become a flood), and a fetch that a servable
        token does not make necessary (``min_valid``, forced) draws from the
        provider's rate limit first.
        """
        if provider.inflight is None:
            now = self._clock.monotonic()
            if provider.needs_login:
                raise unavailable(provider, retry_after=provider.policy.backoff_max)
            if provider.retry_at is not None and now < provider.retry_at:
                raise unavailable(provider, retry_after=provider.retry_at - now)
            if provider.servable(now):
                wait = provider.bucket.take(now)
                if wait > 0:
                    self.metrics.caller_fetch_refused(provider.name)
                    raise rate_limited(provider, wait)
        return await self._join_or_start(provider, reason=reason)

    async def _join_or_start(
        self, provider: Provider, *, reason: str, bounded: bool = True
    ) -> Token:
        """Join the provider's request in flight or start one; *bounded* callers give up
        after ``request_timeout`` (the background task waits as long as it takes)."""
        task = provider.inflight
        if task is None:
            task = self._start_fetch(provider, reason)
        try:
            # shield: a caller that goes away must not cancel the shared request
            # (a rotated refresh token in its answer would be lost).
            if not bounded:
                return await asyncio.shield(task)
            if not task.done():
                finished = asyncio.Event()
                task.add_done_callback(lambda _: finished.set())
                if not await self._clock.wait(finished, self._settings.request_timeout):
                    msg = f"provider {provider.name!r}: the identity provider has not answered yet"
                    raise TokenUnavailableError(msg, retry_after=1, code=ErrorCode.TOKEN_PENDING)
            return task.result()
        except TokenEndpointError:
            # The error's traceback holds this frame, this frame the task, the task the
            # error: a reference cycle that only a full collection frees, and the server
            # runs those rarely (broker.ops.heap). Each failed request stayed in memory with
            # the request, response and frames it holds (issue 12). Drop the task.
            del task
            raise unavailable(provider, retry_after=self._retry_after(provider)) from None

    def _start_fetch(self, provider: Provider, reason: str) -> asyncio.Task[Token]:
        # A failure no caller awaited is still marked as seen (Background) and logged (_fetch).
        task = self.background.spawn(self._fetch(provider, reason), name=f"fetch:{provider.name}")
        provider.inflight = task
        return task

    def _retry_after(self, provider: Provider) -> float:
        if provider.retry_at is None:
            return 1.0
        return max(provider.retry_at - self._clock.monotonic(), 1.0)

    # -- the refresh task ---------------------------------------------------

    async def _maintain(self, provider: Provider) -> None:
        """Refresh ahead of expiry, retry with backoff; runs until cancelled."""
        while True:
            now = self._clock.monotonic()
            start = self._calendar.book(now, now + next_delay(provider, now), max_shift(provider))
            provider.next_refresh_at = start
            if start > now:
                provider.wake.clear()
                if await self._clock.wait(provider.wake, start - now):
                    continue  # a caller-triggered fetch finished: plan again
            # A failure is recorded and logged by _fetch; the next delay is its backoff.
            with contextlib.suppress(TokenUnavailableError):
                await self._join_or_start(provider, reason="scheduled", bounded=False)

    # -- one token request ----------------------------------------------------

    async def _fetch(self, provider: Provider, reason: str) -> Token:
        started = self._clock.monotonic()
        try:
            token = await self._requester.obtain(provider)
        except TokenEndpointError as exc:
            self._outcomes.failure(provider, exc)
            raise
        except Exception as exc:
            # A bug must not end the refresh task; report it like any failure.
            log.exception("%s: unexpected error while getting a token", provider.name)
            error = TokenEndpointError(
                f"internal error: {type(exc).__name__}",
                code=FailureCode.INTERNAL_ERROR,
                kind=FailureKind.TRANSIENT,
            )
            self._outcomes.failure(provider, error)
            raise error from None
        finally:
            provider.inflight = None
            provider.wake.set()
        self._outcomes.success(provider, token, reason, self._clock.monotonic() - started)
        await self._sinks.write(provider, token)
        return token
