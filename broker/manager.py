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
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from broker.clock import Clock, measure_skew
from broker.config import BrokerSettings, ProviderConfig, RefreshSettings
from broker.errors import (
    FailureKind,
    TokenEndpointError,
    TokenUnavailableError,
    UnknownProviderError,
)
from broker.metrics import Metrics, ProviderSnapshot
from broker.pacer import StartCalendar
from broker.protocols import TokenProtocol, build_protocol
from broker.schedule import backoff_delay, refresh_delay
from broker.sinks import FileSink, SinkError
from broker.state import StateError, StateStore, login_fingerprint
from broker.tokens import Token, rfc3339

log = logging.getLogger("broker.manager")

MAX_RESPONSE_BYTES = 256 * 1024
"""A token response larger than this is refused: real ones are a few KiB."""

ProviderState = Literal["starting", "ready", "degraded", "failing", "rejected", "needs_login"]


@dataclass(eq=False)
class Provider:
    """One provider's runtime state. Mutated only on the event loop."""

    name: str
    config: ProviderConfig = field(repr=False)
    protocol: TokenProtocol
    policy: RefreshSettings
    refresh_token: str | None = field(default=None, repr=False)
    token: Token | None = None
    inflight: asyncio.Task[Token] | None = field(default=None, repr=False)
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    generation: int = 0
    jitter_draw: float = 0.5
    refreshes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
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
    sink: FileSink | None = field(default=None, repr=False)
    sink_error: str | None = None
    """Why the newest token could not be written to the sink file, if it could not."""

    @property
    def kind(self) -> str:
        return self.config.type

    def state(self, now: float) -> ProviderState:
        """Where this provider stands, for /providers and /readyz."""
        servable = self.token is not None and self.token.servable(now)
        if self.needs_login:
            return "needs_login"
        if self.consecutive_failures == 0:
            return "ready" if servable else "starting"
        if servable:
            return "degraded"
        if self.last_error is not None and self.last_error.kind is FailureKind.REJECTED:
            return "rejected"
        return "failing"


class TokenManager:
    """Keeps one fresh token per configured provider."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client: httpx.AsyncClient,
        clock: Clock,
        rng: random.Random | None = None,
        store: StateStore | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self._client = client
        self._clock = clock
        self._store = store
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
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
        provider = Provider(
            name=name,
            config=config,
            protocol=build_protocol(config),
            policy=settings.refresh_for(name),
            refresh_token=seed,
            login_id=login_fingerprint(config),
            sink=FileSink(config.sink, name) if config.sink is not None else None,
        )
        if self._store is not None:
            # A persisted refresh token is newer than any seed: it is what the
            # seed (or an earlier login) rotated into.
            persisted = self._store.load(name, provider.login_id)
            if persisted is not None:
                provider.refresh_token = persisted.refresh_token
                log.info("%s: resuming from the refresh token saved in the state directory", name)
        return provider

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

        Returns the provider names that were ``added``, ``removed``, ``changed``
        and ``kept``.
        """
        old = self.providers
        summary: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "kept": []}
        for name in [n for n in old if n not in settings.providers]:
            await self._retire(name)
            self.metrics.forget_provider(name)
            summary["removed"].append(name)
        for name, config in settings.providers.items():
            current = old.get(name)
            if (
                current is not None
                and current.config == config
                and current.policy == settings.refresh_for(name)
            ):
                summary["kept"].append(name)
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

    async def _retire(self, name: str) -> None:
        provider = self.providers.pop(name)
        running: list[asyncio.Task[Any]] = [
            task for task in (self._tasks.pop(name, None), provider.inflight) if task is not None
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
                up=token is not None and token.servable(now),
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
            msg = f"no provider named {name!r} is configured"
            raise UnknownProviderError(msg) from None

    def now(self) -> float:
        return self._clock.monotonic()

    def current(self, name: str, min_valid: float = 0.0) -> Token | None:
        """The token to serve right now without waiting, or None. Never an expired one."""
        token = self.get(name).token
        if token is not None and token.servable(self._clock.monotonic(), min_valid):
            return token
        return None

    async def token(self, name: str, min_valid: float = 0.0) -> Token:
        """A token valid for at least *min_valid* more seconds, fetching one if needed."""
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
            raise TokenUnavailableError(msg, retry_after=0, code="min_valid_unsatisfiable")
        fresh = await self._join_or_start(provider, reason="on demand")
        if not fresh.servable(self._clock.monotonic(), min_valid):
            msg = f"provider {name!r} returned a token valid for less than {min_valid:.0f} s"
            raise TokenUnavailableError(msg, retry_after=0, code="min_valid_unsatisfiable")
        return fresh

    async def force_refresh(self, name: str) -> Token:
        """Get a new token now (a caller's API call was refused with the current one).

        Joins a request already in flight. A token obtained within
        ``force_cooldown`` seconds is returned as is, so a crowd of callers
        that all saw the same 401 causes one refresh, not one each.
        """
        provider = self.get(name)
        token = provider.token
        now = self._clock.monotonic()
        if (
            provider.inflight is None
            and token is not None
            and token.servable(now)
            and now - token.obtained_at < provider.policy.force_cooldown
        ):
            return token
        return await self._join_or_start(provider, reason="forced")

    # -- single flight ------------------------------------------------------

    async def _join_or_start(
        self, provider: Provider, *, reason: str, bounded: bool = True
    ) -> Token:
        """Join the provider's request in flight or start one; *bounded* callers give up
        after ``request_timeout`` (the background task waits as long as it takes)."""
        task = provider.inflight
        if task is None:
            now = self._clock.monotonic()
            if provider.needs_login:
                raise _unavailable(provider, retry_after=provider.policy.backoff_max)
            if provider.retry_at is not None and now < provider.retry_at:
                # In backoff: callers must not turn an outage into a flood.
                raise _unavailable(provider, retry_after=provider.retry_at - now)
            task = self._start_fetch(provider, reason)
        try:
            # shield: a caller that goes away must not cancel the shared request
            # (a rotated refresh token in its answer would be lost).
            if not bounded:
                return await asyncio.shield(task)
            return await asyncio.wait_for(
                asyncio.shield(task), timeout=self._settings.request_timeout
            )
        except TimeoutError:
            msg = f"provider {provider.name!r}: the identity provider has not answered yet"
            raise TokenUnavailableError(msg, retry_after=1, code="token_pending") from None
        except TokenEndpointError:
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
            expires_at=token.expires_at,
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
        try:
            await asyncio.to_thread(
                sink.write,
                token.access_token,
                token.expires_at_wall,
                generation=provider.generation,
            )
        except SinkError as exc:
            # Callers of GET /token are unaffected; the file keeps the previous token.
            provider.sink_error = str(exc)
            log.error("%s", exc)
        else:
            provider.sink_error = None

    async def _obtain(self, provider: Provider) -> Token:
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
        timeout = provider.config.timeout
        # pool=None: waiting for a free connection is not the identity provider's fault.
        request.extensions["timeout"] = httpx.Timeout(timeout, pool=None).as_dict()
        try:
            host = self._sending_to.setdefault(
                request.url.netloc.decode("ascii"), asyncio.Semaphore(self._per_host_limit)
            )
            async with host, self._sending:
                # A token request is ~1 ms of CPU in a few long steps; letting the loop
                # answer waiting callers before sending and again before processing the
                # answer keeps each step short (see broker/pacer.py).
                await asyncio.sleep(0)
                started_mono = self._clock.monotonic()
                started_wall = self._clock.wall()
                response = await self._client.send(request, stream=True)
                try:
                    body = await _read_capped(response, MAX_RESPONSE_BYTES)
                finally:
                    await response.aclose()
            await asyncio.sleep(0)
        except httpx.TimeoutException:
            msg = f"no answer from the identity provider within {timeout:g} s"
            raise TokenEndpointError(msg, code="timeout", kind=FailureKind.TRANSIENT) from None
        except httpx.HTTPError as exc:
            code = "connect_error" if isinstance(exc, httpx.ConnectError) else "network_error"
            msg = f"cannot reach the identity provider: {type(exc).__name__}"
            raise TokenEndpointError(msg, code=code, kind=FailureKind.TRANSIENT) from None
        wall = self._clock.wall()
        provider.clock_skew = measure_skew(response.headers.get("date"), wall)
        # Absolute expiries (HIRO's expires-at, a JWT's exp) are on the provider's
        # clock: read them against its time, not ours, when the two disagree. Date
        # is truncated to the second, so its clock may be up to 1 s later than it
        # says: assume so, the token then counts as expiring early, never late.
        provider_now = wall + (provider.clock_skew + 1.0 if provider.clock_skew else 0.0)
        grant = provider.protocol.parse_response(
            response, body, wall_now=provider_now, refreshing=refreshing
        )
        lifetime = grant.lifetime
        if lifetime is None:
            lifetime = provider.config.default_expires_in
        if lifetime <= 0:
            msg = "the identity provider issued a token that had already expired"
            raise TokenEndpointError(msg, code="expired_on_arrival", kind=FailureKind.TRANSIENT)
        if grant.refresh_token is not None and grant.refresh_token != provider.refresh_token:
            # Rotation: the old refresh token may already be dead at the provider,
            # so the new one goes to disk before anything relies on it.
            await self._persist(provider, grant.refresh_token)
            provider.refresh_token = grant.refresh_token
        # Count the lifetime from when we asked: the token was issued no earlier.
        return Token(
            access_token=grant.access_token,
            obtained_at=started_mono,
            expires_at=started_mono + lifetime,
            expires_at_wall=started_wall + lifetime,
            expires_at_text=rfc3339(started_wall + lifetime),
            scope=grant.scope,
        )

    # -- the state directory ------------------------------------------------

    async def _persist(self, provider: Provider, refresh_token: str) -> None:
        if self._store is None:
            return
        try:
            # In a thread: fsync can take milliseconds. If this task is
            # cancelled meanwhile, the thread still finishes the write.
            await asyncio.to_thread(
                self._store.save, provider.name, provider.login_id, refresh_token
            )
        except StateError as exc:
            # Serving goes on from memory; a restart would need a new login.
            provider.persist_error = str(exc)
            self.metrics.refresh_token_saved(provider.name, ok=False)
            log.error("%s: cannot save the new refresh token: %s", provider.name, exc)
        else:
            provider.persist_error = None
            self.metrics.refresh_token_saved(provider.name, ok=True)

    async def _forget(self, provider: Provider) -> None:
        if self._store is None:
            return
        try:
            await asyncio.to_thread(self._store.delete, provider.name)
        except StateError as exc:
            log.error("%s: cannot remove the dead refresh token's state: %s", provider.name, exc)

    # -- bookkeeping --------------------------------------------------------

    def _record_success(self, provider: Provider, token: Token, reason: str, took: float) -> None:
        before = provider.state(self._clock.monotonic())
        provider.token = token
        provider.generation += 1
        provider.refreshes += 1
        provider.consecutive_failures = 0
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
        provider.last_error = exc
        provider.last_error_wall = self._clock.wall()
        if exc.kind is FailureKind.REJECTED:
            # Retrying refused credentials soon will not help and can lock the
            # account; retry slowly so a fixed secret heals on its own.
            delay = provider.policy.backoff_max
        else:
            delay = backoff_delay(
                failures=provider.consecutive_failures,
                policy=provider.policy,
                draw=self._rng.random(),
                retry_after=exc.retry_after,
            )
        provider.retry_at = self._clock.monotonic() + delay
        servable = provider.token is not None and provider.token.servable(self._clock.monotonic())
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


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        msg = f"token response of {declared} bytes refused (limit {limit})"
        raise TokenEndpointError(msg, code="response_too_large", kind=FailureKind.TRANSIENT)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            msg = f"token response larger than {limit} bytes refused"
            raise TokenEndpointError(msg, code="response_too_large", kind=FailureKind.TRANSIENT)
        chunks.append(chunk)
    return b"".join(chunks)
