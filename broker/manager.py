"""The token manager: the only part of the broker that talks to identity providers.

For each provider it keeps the current token in memory and runs one
background task that refreshes it ahead of expiry (see
:func:`broker.schedule.refresh_delay`) and retries failures with backoff.
Callers read the token synchronously; they wait only when no token fit for
them exists (cold start, ``min_valid``, forced refresh), and then every
concurrent caller shares one request to the identity provider (single flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from broker.clock import Clock
from broker.config import BrokerSettings, ProviderConfig, RefreshSettings
from broker.errors import (
    FailureKind,
    TokenEndpointError,
    TokenUnavailableError,
    UnknownProviderError,
)
from broker.exchange import exchange
from broker.metrics import Metrics, ProviderSnapshot
from broker.pacer import StartCalendar
from broker.policy import CallerBucket, Outcome, ProviderState, provider_state
from broker.protocols import TokenProtocol, build_protocol
from broker.sanitize import one_line, shortened
from broker.schedule import backoff_delay, refresh_delay
from broker.sinks import FileSink, SinkError
from broker.state import login_fingerprint
from broker.store import LocalStore, StoreError, TokenStore
from broker.tokens import Token, matches_etag, place_token

log = logging.getLogger("broker.manager")

SHOWN_NAME_LENGTH = 64
"""How much of an unknown provider name an error echoes: a real name has at most 63 characters."""

SLOW_RETRY_KINDS = frozenset({FailureKind.REJECTED, FailureKind.MISCONFIGURED})
"""Failures that retrying soon cannot fix: they are retried only every ``backoff_max``."""


@dataclass(eq=False)
class Provider:
    """One provider's runtime state. Mutated only on the event loop."""

    name: str
    config: ProviderConfig = field(repr=False)
    protocol: TokenProtocol
    policy: RefreshSettings
    bucket: CallerBucket = field(repr=False)
    """Limits the token requests callers trigger (min_valid, forced refresh)."""
    refresh_token: str | None = field(default=None, repr=False)
    token: Token | None = None
    inflight: asyncio.Task[Token] | None = field(default=None, repr=False)
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    generation: int = 0
    jitter_draw: float = 0.5
    refreshes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    outcome: Outcome = None
    """How the last token request ended (None until the first one has)."""
    last_error: TokenEndpointError | None = None
    last_error_wall: float | None = None
    last_refresh_wall: float | None = None
    retry_at: float | None = None
    next_refresh_at: float | None = None
    needs_login: bool = False
    clock_skew: float | None = None
    """The identity provider's clock minus ours, from its Date header (seconds)."""
    login_id: str = ""
    """Fingerprint of the login (type, endpoint, client, user, seed); keys the state file."""
    persist_error: str | None = None
    """Why the newest refresh token could not be saved, if it could not."""
    resumed: bool = False
    """Whether what the store kept for this login has been taken (before the first request)."""
    sink: FileSink | None = field(default=None, repr=False)
    sink_error: str | None = None
    """Why the newest token could not be written to the sink file, if it could not."""
    sink_expiry: asyncio.Task[None] | None = field(default=None, repr=False)
    """Removes the sink file when its token is no longer servable and none replaced it."""

    @property
    def kind(self) -> str:
        return self.config.type

    def servable(self, now: float, min_valid: float = 0.0) -> bool:
        return self.token is not None and self.token.servable(now, min_valid)

    def state(self, now: float) -> ProviderState:
        """Where this provider stands, for /providers and /readyz."""
        return provider_state(
            outcome=self.outcome, servable=self.servable(now), needs_login=self.needs_login
        )


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
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        # Names tokens in ETags; random per process, so a tag says nothing about the token.
        self._etag_key = secrets.token_bytes(32)
        self._settings = settings
        self._sending = asyncio.Semaphore(settings.max_concurrent_requests)
        self._calendar = StartCalendar()
        # A slow or hanging identity provider may hold only its share of the slots, so
        # the others keep refreshing on time.
        self._per_host_limit = max(1, settings.max_concurrent_requests // 4)
        self._sending_to: dict[str, asyncio.Semaphore] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.providers: dict[str, Provider] = {
            name: self._new_provider(name, settings) for name in settings.providers
        }

    def _new_provider(self, name: str, settings: BrokerSettings) -> Provider:
        config = settings.providers[name]
        seed = config.refresh_token.get_secret_value() if config.refresh_token else None
        policy = settings.refresh_for(name)
        return Provider(
            name=name,
            config=config,
            protocol=build_protocol(config),
            policy=policy,
            bucket=CallerBucket(policy.caller_burst, policy.caller_interval),
            refresh_token=seed,
            login_id=login_fingerprint(config),
            sink=FileSink(config.sink, name) if config.sink is not None else None,
        )

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start one refresh task per provider; each fetches its first token at once."""
        for provider in self.providers.values():
            self._check_sink(provider)
            self.metrics.watch_provider(provider.name, self._snapshot_fn(provider.name))
            self._start_task(provider)

    def _start_task(self, provider: Provider) -> None:
        task = asyncio.get_running_loop().create_task(
            self._maintain(provider), name=f"refresh:{provider.name}"
        )
        self._tasks[provider.name] = task  # a strong reference, or the task may be collected

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the refresh tasks; let token requests in flight finish (up to *grace* s).

        A request in flight may be a refresh whose answer rotates the refresh
        token: cancelling it could lose the only valid one, so it gets time to land.
        """
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        inflight = [p.inflight for p in self.providers.values() if p.inflight is not None]
        if inflight:
            _, late = await asyncio.wait(inflight, timeout=grace)
            for fetch in late:
                fetch.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

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
            provider = self._new_provider(name, settings)
            self.providers[name] = provider
            self._check_sink(provider)
            self.metrics.watch_provider(name, self._snapshot_fn(name))
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
        running: list[asyncio.Task[Any]] = [
            task
            for task in (self._tasks.pop(name, None), provider.inflight, provider.sink_expiry)
            if task is not None
        ]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _snapshot_fn(self, name: str) -> Callable[[], ProviderSnapshot | None]:
        """Reads whichever Provider object holds *name* at scrape time (reload swaps them)."""

        def snapshot() -> ProviderSnapshot | None:
            provider = self.providers.get(name)
            if provider is None:
                return None
            now = self._clock.monotonic()
            token = provider.token
            return ProviderSnapshot(
                state=provider.state(now),
                up=provider.servable(now),
                expires_in=token.remaining(now) if token is not None else None,
                next_refresh_in=(
                    provider.next_refresh_at - now if provider.next_refresh_at is not None else None
                ),
                backoff=max(provider.retry_at - now, 0.0) if provider.retry_at is not None else 0.0,
                consecutive_failures=provider.consecutive_failures,
                clock_skew=provider.clock_skew,
            )

        return snapshot

    def _check_sink(self, provider: Provider) -> None:
        if provider.sink is None:
            return
        try:
            provider.sink.check()
        except SinkError as exc:
            provider.sink_error = str(exc)
            log.error("%s", exc)

    def secret_values(self) -> list[str]:
        """Every secret and token the broker holds now, for the log SecretFilter.

        Values under 8 characters are left out: they are not real secrets (Aerion's
        default client secret is "public") and redacting them would mangle words.
        """
        values: list[str] = []
        for provider in self.providers.values():
            values.extend(provider.protocol.secret_values())
            if provider.refresh_token:
                values.append(provider.refresh_token)
            if provider.token is not None:
                values.append(provider.token.access_token)
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
            raise _unsatisfiable(msg)
        fresh = await self._fetch_for_caller(
            provider, reason="min_valid" if provider.servable(now) else "on demand"
        )
        if not fresh.servable(self._clock.monotonic(), min_valid):
            msg = f"provider {name!r} returned a token valid for less than {min_valid:.0f} s"
            raise _unsatisfiable(msg)
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
                and exc.code != "needs_login"
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
                raise _unavailable(provider, retry_after=provider.policy.backoff_max)
            if provider.retry_at is not None and now < provider.retry_at:
                raise _unavailable(provider, retry_after=provider.retry_at - now)
            if provider.servable(now):
                wait = provider.bucket.take(now)
                if wait > 0:
                    self.metrics.caller_fetch_refused(provider.name)
                    raise _rate_limited(provider, wait)
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
                    raise TokenUnavailableError(msg, retry_after=1, code="token_pending")
            return task.result()
        except TokenEndpointError:
            # The error's traceback holds this frame, this frame the task, the task the
            # error: a reference cycle that only a full collection frees, and the server
            # runs those rarely (broker.heap). Each failed request stayed in memory with
            # the request, response and frames it holds (issue 12). Drop the task.
            del task
            raise _unavailable(provider, retry_after=self._retry_after(provider)) from None

    def _start_fetch(self, provider: Provider, reason: str) -> asyncio.Task[Token]:
        task = asyncio.get_running_loop().create_task(
            self._fetch(provider, reason), name=f"fetch:{provider.name}"
        )
        provider.inflight = task
        # Mark a failure as seen even when no caller awaited it (it is logged in _fetch).
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
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
            start = self._calendar.book(
                now, now + self._next_delay(provider, now), _max_shift(provider)
            )
            provider.next_refresh_at = start
            if start > now:
                provider.wake.clear()
                if await self._clock.wait(provider.wake, start - now):
                    continue  # a caller-triggered fetch finished: plan again
            # A failure is recorded and logged by _fetch; the next delay is its backoff.
            with contextlib.suppress(TokenUnavailableError):
                await self._join_or_start(provider, reason="scheduled", bounded=False)

    def _next_delay(self, provider: Provider, now: float) -> float:
        if provider.needs_login:
            return provider.policy.backoff_max
        if provider.retry_at is not None:
            return max(provider.retry_at - now, 0.0)
        token = provider.token
        if token is None:
            return 0.0
        return refresh_delay(
            now=now,
            obtained_at=token.obtained_at,
            # Plan against the end of serving, not of the token: for a short token
            # the serving floor is a real part of its life.
            expires_at=token.serve_until,
            policy=provider.policy,
            draw=provider.jitter_draw,
        )

    # -- one token request ----------------------------------------------------

    async def _fetch(self, provider: Provider, reason: str) -> Token:
        started = self._clock.monotonic()
        try:
            token = await self._obtain(provider)
        except TokenEndpointError as exc:
            self._record_failure(provider, exc)
            raise
        except Exception as exc:
            # A bug must not end the refresh task; report it like any failure.
            log.exception("%s: unexpected error while getting a token", provider.name)
            error = TokenEndpointError(
                f"internal error: {type(exc).__name__}",
                code="internal_error",
                kind=FailureKind.TRANSIENT,
            )
            self._record_failure(provider, error)
            raise error from None
        finally:
            provider.inflight = None
            provider.wake.set()
        self._record_success(provider, token, reason, self._clock.monotonic() - started)
        await self._write_sink(provider, token)
        return token

    async def _write_sink(self, provider: Provider, token: Token) -> None:
        sink = provider.sink
        if sink is None:
            return
        generation = provider.generation
        if not token.servable(self._clock.monotonic()):
            return  # a sink, like every answer, never gets a token it may not serve
        try:
            await asyncio.to_thread(
                sink.write, token.access_token, token.expires_at_wall, generation=generation
            )
        except SinkError as exc:
            # Callers of GET /token are unaffected; the file keeps the previous token.
            provider.sink_error = str(exc)
            log.error("%s", exc)
            return
        provider.sink_error = None
        if provider.sink_expiry is not None:
            provider.sink_expiry.cancel()
        provider.sink_expiry = asyncio.get_running_loop().create_task(
            self._expire_sink(provider, sink, token, generation), name=f"sink:{provider.name}"
        )

    async def _expire_sink(
        self, provider: Provider, sink: FileSink, token: Token, generation: int
    ) -> None:
        """Remove the sink file once its token may no longer be served, unless replaced."""
        await self._clock.sleep(token.serve_until - self._clock.monotonic())
        if provider.token is not token:
            return
        try:
            await asyncio.to_thread(sink.clear, generation=generation)
        except SinkError as exc:
            provider.sink_error = str(exc)
            log.error("%s", exc)
        else:
            log.warning(
                "%s: token expired with no replacement; removed the sink file %s",
                provider.name,
                sink.path,
            )

    async def _obtain(self, provider: Provider) -> Token:
        # One actor at a time talks to the identity provider for this login (in one
        # broker, single flight already makes it so; a shared store makes it so across).
        async with self._store.lease(provider.name):
            if not provider.resumed:
                await self._resume(provider)
            token = await self._request_token(provider)
            await self._store.publish(provider.name, provider.login_id, token)
            return token

    async def _resume(self, provider: Provider) -> None:
        """Before the first token request: take what the store kept for this login."""
        stored = await self._store.load(provider.name, provider.login_id)
        provider.resumed = True
        if stored.refresh_token is not None:
            # A saved refresh token is newer than any seed: it is what the seed (or an
            # earlier login) rotated into.
            provider.refresh_token = stored.refresh_token
            log.info(
                "%s: resuming from the refresh token saved in the state directory", provider.name
            )

    async def _request_token(self, provider: Provider) -> Token:
        protocol = provider.protocol
        refresh_token = provider.refresh_token
        if refresh_token is not None:
            try:
                return await self._send(provider, protocol.refresh_request(refresh_token), True)
            except TokenEndpointError as exc:
                if not exc.refresh_token_rejected:
                    raise
                log.warning(
                    "%s: refresh token rejected (%s)%s",
                    provider.name,
                    exc.code,
                    "; logging in again" if protocol.can_login else "",
                )
                if provider.refresh_token == refresh_token:
                    provider.refresh_token = None
                    await self._forget(provider)
                if not protocol.can_login:
                    provider.needs_login = True
                    msg = (
                        f"the refresh token was rejected ({exc.code}) and no password or"
                        " client credentials are configured: a new login is needed"
                    )
                    raise TokenEndpointError(
                        msg, code="needs_login", kind=FailureKind.REJECTED, status=exc.status
                    ) from None
        if not protocol.can_login:
            provider.needs_login = True
            msg = "no refresh token left and no password or client credentials configured"
            raise TokenEndpointError(msg, code="needs_login", kind=FailureKind.REJECTED)
        return await self._send(provider, protocol.login_request(), False)

    async def _send(self, provider: Provider, request: httpx.Request, refreshing: bool) -> Token:
        grant = "refresh_token" if refreshing else "login"
        started = self._clock.monotonic()
        try:
            token = await self._send_once(provider, request, refreshing)
        except TokenEndpointError as exc:
            took = self._clock.monotonic() - started
            self.metrics.token_request(provider.name, grant, exc.code, took)
            raise
        self.metrics.token_request(
            provider.name, grant, "success", self._clock.monotonic() - started
        )
        return token

    async def _send_once(
        self, provider: Provider, request: httpx.Request, refreshing: bool
    ) -> Token:
        host = self._sending_to.setdefault(
            request.url.netloc.decode("ascii"), asyncio.Semaphore(self._per_host_limit)
        )
        async with host, self._sending:
            answer = await exchange(
                self._client,
                provider.protocol,
                request,
                refreshing=refreshing,
                timeout=provider.config.timeout,
                default_expires_in=provider.config.default_expires_in,
                clock=self._clock,
            )
        provider.clock_skew = answer.clock_skew
        grant = answer.grant
        floor = provider.policy.serve_min_remaining
        if answer.lifetime <= floor:
            # It could never be served (see serve_min_remaining).
            msg = f"the identity provider issued a token that lives {answer.lifetime:.1f} s"
            raise TokenEndpointError(msg, code="expired_on_arrival", kind=FailureKind.TRANSIENT)
        if grant.refresh_token is not None and grant.refresh_token != provider.refresh_token:
            # Rotation: the old refresh token may already be dead at the provider,
            # so the new one goes to disk before anything relies on it.
            await self._persist(provider, grant.refresh_token)
            provider.refresh_token = grant.refresh_token
        return place_token(
            grant.access_token,
            sent_at=answer.sent_at,
            sent_at_wall=answer.sent_at_wall,
            lifetime=answer.lifetime,
            etag_key=self._etag_key,
            serve_min_remaining=floor,
        )

    # -- the state directory ------------------------------------------------

    async def _persist(self, provider: Provider, refresh_token: str) -> None:
        if not self._store.durable:
            return
        try:
            await self._store.save_refresh_token(provider.name, provider.login_id, refresh_token)
        except StoreError as exc:
            # Serving goes on from memory; a restart would need a new login.
            provider.persist_error = str(exc)
            self.metrics.refresh_token_saved(provider.name, ok=False)
            log.error("%s: cannot save the new refresh token: %s", provider.name, exc)
        else:
            provider.persist_error = None
            self.metrics.refresh_token_saved(provider.name, ok=True)

    async def _forget(self, provider: Provider) -> None:
        try:
            await self._store.forget(provider.name)
        except StoreError as exc:
            log.error("%s: cannot remove the dead refresh token's state: %s", provider.name, exc)

    # -- bookkeeping --------------------------------------------------------

    def _record_success(self, provider: Provider, token: Token, reason: str, took: float) -> None:
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
        self._log_state_change(provider, before)

    def _record_failure(self, provider: Provider, exc: TokenEndpointError) -> None:
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
        provider.retry_at = self._clock.monotonic() + delay
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
        self._log_state_change(provider, before)

    def _log_state_change(self, provider: Provider, before: ProviderState) -> None:
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


MAX_SHIFT_SHARE = 0.05
MAX_SHIFT = 10.0


def _max_shift(provider: Provider) -> float:
    """How much later than planned a refresh may start to keep planned starts apart:
    5 % of the token's lifetime, at most 10 s, so the margin before expiry stays
    intact; unbounded while there is no token (start-up, failures) to lose."""
    token = provider.token
    if token is None:
        return math.inf
    return min(token.lifetime * MAX_SHIFT_SHARE, MAX_SHIFT)


def _unavailable(provider: Provider, *, retry_after: float) -> TokenUnavailableError:
    error = provider.last_error
    if provider.needs_login:
        reason = error.message if error is not None else "a new login is needed"
        return TokenUnavailableError(
            f"provider {provider.name!r} needs a new login: {reason}",
            retry_after=retry_after,
            code="needs_login",
        )
    detail = f": {error.message} [{error.code}]" if error is not None else ""
    return TokenUnavailableError(
        f"provider {provider.name!r} has no valid token{detail}",
        retry_after=retry_after,
    )


def _rate_limited(provider: Provider, wait: float) -> TokenUnavailableError:
    policy = provider.policy
    msg = (
        f"provider {provider.name!r}: callers asked for more than {policy.caller_burst} new"
        f" tokens in a row (one more every {policy.caller_interval:g} s); the current token"
        " is still valid"
    )
    return TokenUnavailableError(msg, retry_after=wait, code="refresh_rate_limited", status=429)


def _unsatisfiable(message: str) -> TokenUnavailableError:
    return TokenUnavailableError(message, retry_after=0, code="min_valid_unsatisfiable", status=422)
