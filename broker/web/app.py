"""The broker's ASGI app put together, and its lifespan.

:func:`create_app` builds the FastAPI app (the guard middleware, the error answers of
:mod:`broker.web.error_handlers`, the endpoints of :mod:`broker.web.routes`, the docs) and
puts the fast path in front; the lifespan runs the refresh engine for as long as the app
serves: the HTTP client to the identity providers, the state directory, the SIGHUP reload
and the redaction of secrets in logs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from broker import __version__
from broker.config.settings import BrokerSettings
from broker.core.clock import Clock, SystemClock
from broker.core.errors import STATUS, ErrorCode
from broker.engine.local_copy import LocalCopy
from broker.engine.manager import TokenManager
from broker.engine.state import StateStore
from broker.engine.store import LocalStore, StoreError, TokenStore
from broker.ops import heap
from broker.ops.audit import AuditTrail
from broker.ops.logs import add_secret_filter
from broker.ops.metrics import Metrics
from broker.web.docs import add_docs_routes
from broker.web.error_handlers import add_error_handlers
from broker.web.fastpath import TokenFastPath
from broker.web.login_routes import add_login_routes
from broker.web.reload import Reloader
from broker.web.routes import add_metrics_route, add_routes
from broker.web.runtime import Runtime
from broker.web.security import Guard, GuardMiddleware, SecurityHeadersMiddleware

if TYPE_CHECKING:
    from broker.engine.redis_store import RedisStore


def create_app(
    settings: BrokerSettings,
    *,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    registry: CollectorRegistry | None = None,
    audit: AuditTrail | None = None,
    store: TokenStore | None = None,
    freeze_heap: bool = False,
) -> TokenFastPath:
    """The broker's whole ASGI app: the fast path in front of the FastAPI routes. Nothing
    starts until the app's lifespan runs (uvicorn's ``lifespan="on"``).

    With *config_path*, SIGHUP re-reads that file (see :mod:`broker.web.reload`),
    applying *overrides* (the command line's ``--host`` and ``--port``) again;
    ``app.runtime.reloader`` is the :class:`~broker.web.reload.Reloader` then.
    *store* is where tokens live beyond memory (:mod:`broker.engine.store`); by default the
    one ``settings.store`` names: the Redis server of ``backend: redis``
    (:func:`shared_store`), else the state directory of ``settings.state_dir`` (the CLI
    opens it first to report problems early), or none. *clock*, *rng* (refresh jitter) and
    *transport* (to the identity providers) exist for tests: a fake clock, a seeded
    generator, ``httpx.MockTransport``.
    *registry* takes the metrics (default a registry of their own), *audit* the per-token
    audit lines (default the ``broker.ops.audit`` logger, on *clock*'s wall time).
    *freeze_heap* is for the server process: see :mod:`broker.ops.heap`.
    """
    clock = clock or SystemClock()
    runtime = Runtime(
        guard=Guard(settings),
        metrics=Metrics(registry),
        audit=audit if audit is not None else AuditTrail(clock=clock.wall),
    )
    api = create_api(
        settings,
        runtime,
        config_path=config_path,
        overrides=overrides,
        clock=clock,
        rng=rng,
        transport=transport,
        store=store,
        freeze_heap=freeze_heap,
    )
    return TokenFastPath(api, runtime)


def create_api(
    settings: BrokerSettings,
    runtime: Runtime,
    *,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    clock: Clock,
    rng: random.Random | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    store: TokenStore | None = None,
    freeze_heap: bool = False,
) -> FastAPI:
    """The FastAPI app alone (every route, every error answer), on *runtime*; its lifespan
    runs the refresh engine. :func:`create_app` puts the fast path in front."""
    guard, metrics = runtime.guard, runtime.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,  # a token endpoint that redirects is misconfigured
            trust_env=False,  # no proxy from the environment unless configured
            # As many pooled connections as requests may be in flight: httpx's default of
            # 20 kept-alive connections closed and reopened them on every refresh burst.
            limits=httpx.Limits(
                max_connections=settings.max_concurrent_requests,
                max_keepalive_connections=settings.max_concurrent_requests,
            ),
        ) as client:
            # A store the app opens itself it also closes (one given to it, its owner does).
            shared = shared_store(settings, clock, metrics) if store is None else None
            in_use: TokenStore | None = store if store is not None else shared
            copy = open_store(settings) if shared is not None else None
            if shared is not None and copy is not None:
                in_use = LocalCopy(shared, copy)  # this replica's copy beside Redis
            manager = TokenManager(
                settings,
                client=client,
                clock=clock,
                rng=rng,
                store=in_use if in_use is not None else LocalStore(open_store(settings)),
                metrics=metrics,
            )
            runtime.manager = manager
            _announce_access_rules(settings, guard)
            await manager.start()
            if freeze_heap:
                heap.freeze()
            stop_reloading = _reload_on_sighup(
                runtime, manager, config_path, overrides, freeze_heap
            )
            store_secrets = shared.secret_values() if shared is not None else []
            stop_redacting = add_secret_filter(lambda: [*manager.secret_values(), *store_secrets])
            try:
                yield
            finally:
                stop_redacting()
                stop_reloading()
                await manager.stop()
                runtime.manager = None
                if shared is not None:
                    await shared.aclose()

    app = BrokerApp(
        title="credential broker",
        version=__version__,
        summary="Serves fresh OAuth2 bearer tokens to local processes.",
        lifespan=lifespan,
        # broker.web.docs serves these itself: for callers allowed status, with no CDN.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.add_middleware(GuardMiddleware, guard=guard, on_denied=metrics.caller_denied)
    add_error_handlers(app, metrics)
    add_routes(app, runtime)
    add_login_routes(app, runtime)
    add_docs_routes(app, guard)
    add_metrics_route(app, guard, metrics)
    return app


class BrokerApp(FastAPI):
    """FastAPI with the security headers on every answer.

    :class:`SecurityHeadersMiddleware` goes around the whole middleware stack: added with
    ``add_middleware`` it would run inside Starlette's error middleware, and a 500 would
    leave without the headers.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeadersMiddleware(super().build_middleware_stack())

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, plus the client key as a bearer scheme (optional: without
        clients no key is needed, so ``/docs`` offers it as "Authorize") and every error
        code as an enum with its status (``x-status``)."""
        if self.openapi_schema is None:
            schema = super().openapi()
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["clientKey"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "A configured client's key (`clients.<name>.key`)",
            }
            schema["security"] = [{}, {"clientKey": []}]
            components.setdefault("schemas", {})["ErrorCode"] = {
                "type": "string",
                "enum": [code.value for code in ErrorCode],
                "x-status": {code.value: STATUS[code] for code in ErrorCode},
                "description": "The `error` of every answer the broker itself refuses, with"
                " its HTTP status; anything else the HTTP layer refuses is `http_<status>`.",
            }
            self.openapi_schema = schema
        return self.openapi_schema


def _announce_access_rules(settings: BrokerSettings, guard: Guard) -> None:
    log = logging.getLogger("broker.security")
    if guard.clients:
        by_peer = sum(client.by_peer for client in guard.clients)
        how = f" ({by_peer} by their uid on the Unix socket)" if by_peer else ""
        log.info(
            "%d client(s) configured%s: token requests need a client key%s",
            len(guard.clients),
            how,
            " or a known uid" if by_peer else "",
        )
    elif settings.security.allow_unauthenticated_network:
        log.warning(
            "SECURITY: security.allow_unauthenticated_network is set: anything that can reach"
            " %s:%d can take tokens without a key",
            settings.host,
            settings.port,
        )
    else:
        log.info("no clients configured: only processes on this host (loopback) may call")


def open_store(settings: BrokerSettings) -> StateStore | None:
    """The state directory from the settings, or None. Raises StateError."""
    if settings.state_dir is None:
        return None
    return StateStore(settings.state_dir, key=_state_key(settings))


def shared_store(
    settings: BrokerSettings, clock: Clock, metrics: Metrics | None = None
) -> RedisStore | None:
    """The Redis store of ``store.backend: redis`` (not connected yet: it connects at its
    first command, on the loop that sends it), or None for ``backend: local``. Raises
    StoreError (a ``state_key`` that is not a Fernet key). *metrics* get its series."""
    config = settings.store
    if config.backend != "redis":
        return None
    # Imported here: redis-py costs a broker without a shared store ~5 MB resident and
    # start-up time for nothing.
    from broker.engine.redis_store import RedisStore

    if config.url is None:  # the config refuses it; this keeps the type checker informed
        msg = "store.url is required with store.backend: redis"
        raise StoreError(msg)
    return RedisStore(
        config.url.get_secret_value(),
        clock=clock,
        key_prefix=config.key_prefix,
        lease_ttl=config.lease_ttl,
        key=_state_key(settings),
        metrics=metrics.store if metrics is not None else None,
    )


def _state_key(settings: BrokerSettings) -> bytes | None:
    return settings.state_key.get_secret_value().encode() if settings.state_key else None


def _reload_on_sighup(
    runtime: Runtime,
    manager: TokenManager,
    config_path: Path | None,
    overrides: Mapping[str, Any] | None,
    frozen_heap: bool,
) -> Callable[[], None]:
    """Install a SIGHUP handler that reloads *config_path*; returns its remover."""
    if config_path is None:
        return lambda: None
    reloader = Reloader(
        manager=manager,
        guard=runtime.guard,
        path=config_path,
        in_use=manager.settings,
        overrides=overrides,
        frozen_heap=frozen_heap,
    )
    runtime.reloader = reloader
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals reach only the main thread (tests run us elsewhere)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reloader.trigger)

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove
