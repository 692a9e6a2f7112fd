"""What ``broker check`` verifies beyond the config's syntax, and its test login.

Each check runs the code ``serve`` runs, so its answer cannot drift from what
``serve`` will do:

* :func:`storage_problems`: the state directory and every token sink's
  directory accept a file now (``StateStore``'s and ``FileSink``'s own start-up
  checks).
* :func:`cleartext_warnings`: token URLs in plain http to another host.
* :func:`store_facts`: the shared store (``store.backend: redis``) answers, and whether
  it keeps what it is given across a restart.
* :func:`try_logins`: one real token request per provider with its primary
  grant, sent by :func:`broker.engine.exchange.exchange` as the refresh engine sends
  it. Nothing is saved (no state file, no sink file), and a refresh token is
  never spent: a rotating one would die for the broker that holds it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx

from broker.config.settings import BrokerSettings
from broker.core.addresses import is_loopback_address
from broker.core.clock import SystemClock
from broker.core.errors import FailureCode, FailureKind, TokenEndpointError
from broker.engine.exchange import exchange
from broker.engine.redis_values import ServerFacts
from broker.engine.state_file import StateError
from broker.ops.sinks import FileSink, SinkError
from broker.protocols import TokenProtocol, build_protocol
from broker.protocols.presets import ProviderConfig
from broker.web.app import open_store, shared_store

# -- storage --------------------------------------------------------------------------


def storage_problems(settings: BrokerSettings) -> list[tuple[str, str]]:
    """``(config key, problem)`` for every directory ``serve`` could not write to.

    Runs serve's own checks: opening the state directory (which creates it when
    missing, as serve does, and proves it writable) and each sink's check.
    """
    problems: list[tuple[str, str]] = []
    if settings.state_dir is not None:
        try:
            open_store(settings)
        except StateError as exc:
            problems.append(("state_dir", str(exc)))
    for name, provider in settings.providers.items():
        for key, sink in provider.sink_configs():
            try:
                FileSink(sink, name).check()
            except SinkError as exc:
                problems.append((".".join(("providers", name, *key, exc.key)), str(exc)))
    return problems


# -- the shared store ---------------------------------------------------------------


async def store_facts(settings: BrokerSettings) -> ServerFacts | None:
    """The Redis server of ``store.backend: redis`` as serve would open it (None for
    ``local``): connected once, nothing written. Raises StoreError."""
    store = shared_store(settings, SystemClock())
    if store is None:
        return None
    try:
        return await store.server_facts()
    finally:
        await store.aclose()


def describe_store(facts: ServerFacts) -> tuple[str, str | None]:
    """The line ``check`` prints for the store, and a warning when it persists nothing."""
    kept = []
    if facts.aof:
        kept.append("AOF on")
    if facts.save_points:
        kept.append(f"RDB save points {facts.save_points}")
    if facts.save_points is None:
        kept.append("RDB save points unknown (CONFIG GET refused)")
    line = f"store: {facts.where}, Redis {facts.version}, persistence: {', '.join(kept) or 'none'}"
    warning = None
    if facts.persists is False:
        # Without the refresh tokens every replica needs a new login, and a provider that
        # lives on a seeded refresh token alone is lost.
        warning = (
            f"store: {facts.where} persists nothing (appendonly no, no save points): a"
            " restarted Redis forgets every refresh token; set appendonly yes"
        )
    return line, warning


# -- plain http -----------------------------------------------------------------------


def token_url(protocol: TokenProtocol) -> httpx.URL:
    """Where this provider's token requests go, read from a request built, never sent."""
    if protocol.can_login:
        return protocol.login_request().url
    # A placeholder: only the URL of this request is read.
    return protocol.refresh_request("unused").url


def cleartext_warnings(settings: BrokerSettings) -> list[str]:
    """One warning per provider whose token requests would cross a network unencrypted."""
    warnings = []
    for name, provider in settings.providers.items():
        url = token_url(build_protocol(provider))
        if url.scheme == "http" and not is_loopback_address(url.host):
            # Only with allow_insecure_http: the config refuses it otherwise.
            warnings.append(
                f"providers.{name}: allow_insecure_http is set: token requests go to"
                f" {_shown(url)} in plain http: passwords, client secrets and tokens cross"
                " the network unencrypted; use https://"
            )
    return warnings


def _shown(url: httpx.URL) -> str:
    """Scheme, host, port and path: no user:password@ and no query, which could hold secrets."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{host}{port}{url.path}"


# -- test login -----------------------------------------------------------------------


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class LoginResult:
    """One provider's test login, as ``broker check --login`` reports it."""

    provider: str
    outcome: Outcome
    summary: str
    """``login OK (token valid 3600 s)``, ``login FAILED: credentials refused (invalid_client)``."""
    detail: str | None = None
    """For a failure, the scrubbed error message (never a secret or a token)."""


SKIPPED = "skipped (lives on a refresh token; check --login never spends one)"


async def try_logins(
    settings: BrokerSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncGenerator[LoginResult]:
    """Log in once per provider, concurrently; yield the results in config order.

    At most ``max_concurrent_requests`` requests are in flight, as in the broker.
    """
    bound = asyncio.Semaphore(settings.max_concurrent_requests)
    async with _client(settings, transport) as client:

        async def one(name: str, provider: ProviderConfig) -> LoginResult:
            async with bound:
                return await _login_once(client, name, provider)

        tasks = [
            asyncio.create_task(one(name, provider))
            for name, provider in settings.providers.items()
        ]
        try:
            for task in tasks:
                yield await task
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _client(
    settings: BrokerSettings, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    """An HTTP client set up as the broker's own (broker.web.app.create_app)."""
    return httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,  # a token endpoint that redirects is misconfigured
        trust_env=False,  # no proxy from the environment
        limits=httpx.Limits(
            max_connections=settings.max_concurrent_requests,
            max_keepalive_connections=settings.max_concurrent_requests,
        ),
    )


async def _login_once(client: httpx.AsyncClient, name: str, config: ProviderConfig) -> LoginResult:
    protocol = build_protocol(config)
    if not protocol.can_login:
        return LoginResult(name, Outcome.SKIPPED, SKIPPED)
    try:
        got = await exchange(
            client,
            protocol,
            protocol.login_request(),
            refreshing=False,
            timeout=config.timeout,
            default_expires_in=config.default_expires_in,
            clock=SystemClock(),
        )
    except TokenEndpointError as exc:
        summary = f"login FAILED: {failure_kind(exc)} ({exc.code})"
        detail = exc.message.removeprefix("login failed: ")  # the summary says so already
        return LoginResult(name, Outcome.FAILED, summary, detail)
    # The token and any refresh token are dropped here: nothing is kept or written.
    assumed = ", assumed: the answer gave none" if got.grant.lifetime is None else ""
    return LoginResult(name, Outcome.OK, f"login OK (token valid {got.lifetime:.0f} s{assumed})")


UNREACHABLE_CODES = frozenset(
    {FailureCode.CONNECT_ERROR, FailureCode.NETWORK_ERROR, FailureCode.TIMEOUT}
)


def failure_kind(exc: TokenEndpointError) -> str:
    """What a failed login means, in the words an operator acts on."""
    if exc.kind is FailureKind.REJECTED:
        return "credentials refused"
    if exc.kind is FailureKind.MISCONFIGURED:
        return "redirected" if exc.code == FailureCode.UNEXPECTED_REDIRECT else "endpoint not found"
    if exc.code in UNREACHABLE_CODES:
        return "identity provider unreachable"
    return "identity provider error (may be temporary)"
