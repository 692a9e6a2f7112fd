"""One provider's runtime state, as the refresh engine keeps it (mutated only on the event
loop), and what follows from it alone."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from broker.config.providers import ProviderConfig
from broker.config.settings import BrokerSettings
from broker.core.errors import TokenEndpointError
from broker.core.tokens import Token
from broker.engine.fingerprint import login_fingerprint
from broker.ops.metrics import ProviderSnapshot
from broker.ops.sinks import FileSink
from broker.policy.schedule import RefreshSettings, alone_from, refresh_delay
from broker.policy.states import CallerBucket, Outcome, ProviderState, provider_state
from broker.protocols import TokenProtocol, build_protocol
from broker.protocols.authorize import AuthorizationEndpoint
from broker.protocols.presets import build_authorization


@dataclass(eq=False)
class ProviderSink:
    """One of a provider's sink files and how writing it went. Mutated only on the event loop."""

    file: FileSink
    error: str | None = None
    """Why the newest token could not be written to the file (or, from the start check,
    why it cannot be), while that is so; it names the file."""
    written_wall: float | None = None
    """When the token now in the file was written (wall clock); None before the first
    write and once the file was removed."""
    expiry: asyncio.Task[None] | None = field(default=None, repr=False)
    """Removes the file once the token in it may no longer be served, unless a newer one
    was written first."""


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
    refresh_loop: asyncio.Task[None] | None = field(default=None, repr=False)
    """The task that keeps this provider's token fresh (:meth:`TokenManager._maintain`)."""
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
    store_holds: str | None = field(default=None, repr=False)
    """The refresh token a shared store held when last read inside the lease: the fence of
    the next save (another broker may have saved a newer one since, if ours expired)."""
    private_refresh: bool = False
    """The refresh token is this broker's own: from a login made alone while the shared
    store could not be used, or one the store refused to take (another broker's was newer).
    No other broker knows it, so it may be used without the lease; the store's, once it can
    be read, is preferred to it."""
    sinks: list[ProviderSink] = field(default_factory=list, repr=False)
    """Its sink files (``sink:`` or ``sinks:``), in the order configured."""
    authorization: AuthorizationEndpoint | None = None
    """Where a person logs in (``grant: authorization_code``); None for a provider that
    logs in by itself."""

    @property
    def kind(self) -> str:
        return self.config.type

    @property
    def sink_error(self) -> str | None:
        """Why a sink file cannot be written: the first failing one's reason (in the order
        configured; it names the file), None while every one is written."""
        return next((sink.error for sink in self.sinks if sink.error is not None), None)

    def servable(self, now: float, min_valid: float = 0.0) -> bool:
        return self.token is not None and self.token.servable(now, min_valid)

    def state(self, now: float) -> ProviderState:
        """Where this provider stands, for /providers and /readyz."""
        return provider_state(
            outcome=self.outcome,
            servable=self.servable(now),
            needs_login=self.needs_login,
            sink_failing=self.sink_error is not None,
        )

    def secret_values(self) -> list[str]:
        """Its configured secrets, its refresh token and its token, for the log filter."""
        values = list(self.protocol.secret_values())
        if self.refresh_token:
            values.append(self.refresh_token)
        if self.store_holds:
            values.append(self.store_holds)
        if self.token is not None:
            values.append(self.token.access_token)
        return values

    def snapshot(self, now: float) -> ProviderSnapshot:
        """What the metrics show of this provider at *now*."""
        token = self.token
        return ProviderSnapshot(
            state=self.state(now),
            up=self.servable(now),
            expires_in=token.remaining(now) if token is not None else None,
            next_refresh_in=(
                self.next_refresh_at - now if self.next_refresh_at is not None else None
            ),
            backoff=max(self.retry_at - now, 0.0) if self.retry_at is not None else 0.0,
            consecutive_failures=self.consecutive_failures,
            clock_skew=self.clock_skew,
        )


MAX_SHIFT_SHARE = 0.05
MAX_SHIFT = 10.0


def max_shift(provider: Provider) -> float:
    """How much later than planned a refresh may start to keep planned starts apart:
    5 % of the token's lifetime, at most 10 s, so the margin before expiry stays
    intact; unbounded while there is no token (start-up, failures) to lose."""
    token = provider.token
    if token is None:
        return math.inf
    return min(token.lifetime * MAX_SHIFT_SHARE, MAX_SHIFT)


def new_provider(name: str, settings: BrokerSettings) -> Provider:
    """The provider *name* of *settings*, before its first token request."""
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
        sinks=[ProviderSink(FileSink(sink, name)) for _, sink in config.sink_configs()],
        authorization=build_authorization(config),
    )


def next_delay(provider: Provider, now: float) -> float:
    """Seconds until the provider's next planned token request."""
    if provider.needs_login:
        return provider.policy.backoff_max
    if provider.retry_at is not None:
        return max(provider.retry_at - now, 0.0)
    token = provider.token
    if token is None:
        return 0.0
    if provider.refresh_token is None and not provider.protocol.can_login:
        # Nothing can renew this token (HIRO's UI flow, a login's answer without a refresh
        # token): ask for nothing while it may be served; then say a login is needed.
        return max(token.serve_until - now, 0.0)
    return refresh_delay(
        now=now,
        obtained_at=token.obtained_at,
        # Plan against the end of serving, not of the token: for a short token
        # the serving floor is a real part of its life.
        expires_at=token.serve_until,
        policy=provider.policy,
        draw=provider.jitter_draw,
    )


def may_go_alone(provider: Provider, now: float) -> bool:
    """Whether the provider may log in without the shared store's lease when the store
    cannot be used: only with a primary grant (never the shared refresh token), and only
    once its token is in the last part of its life (:func:`broker.policy.schedule.alone_from`)
    or gone."""
    if not provider.protocol.can_login:
        return False
    token = provider.token
    if token is None or not token.servable(now):
        return True
    return now >= alone_from_at(provider)


def alone_from_at(provider: Provider) -> float:
    """When the provider's token enters the last part of its life (monotonic); now if it
    has none."""
    token = provider.token
    if token is None:
        return -math.inf
    return alone_from(
        obtained_at=token.obtained_at, expires_at=token.serve_until, policy=provider.policy
    )
