"""The HTTP API: FastAPI routes over a :class:`~broker.engine.manager.TokenManager`.

Route handlers never talk to an identity provider themselves; in steady state
``GET /token/{provider}`` is a dictionary lookup and a few bytes of JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import signal
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from broker import __version__
from broker.config.settings import BrokerSettings
from broker.core.clock import Clock, SystemClock
from broker.core.errors import (
    ErrorCode,
    TokenUnavailableError,
    UnknownProviderError,
    http_layer_code,
)
from broker.core.tokens import Token, rfc3339
from broker.engine.manager import TokenManager
from broker.engine.provider import Provider
from broker.engine.state import StateStore
from broker.engine.store import LocalStore, TokenStore
from broker.ops import heap
from broker.ops.audit import AuditTrail
from broker.ops.logs import add_secret_filter
from broker.ops.metrics import Metrics
from broker.policy.states import SERVING_STATES
from broker.web.answers import NO_STORE, accepts_raw, token_payload
from broker.web.api_models import (
    ERROR_RESPONSES,
    ProvidersBody,
    ReadyBody,
    TokenBody,
)
from broker.web.docs import add_docs_routes
from broker.web.fastpath import TokenFastPath
from broker.web.reload import Reloader
from broker.web.runtime import Runtime
from broker.web.security import Denied, Guard, GuardMiddleware, SecurityHeadersMiddleware

MAX_MIN_VALID = 86400

MinValid = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_MIN_VALID,
        description="Seconds the returned token must stay valid; refreshes first if needed.",
    ),
]
Format = Annotated[
    Literal["json", "raw"] | None,
    Query(description="`raw` returns the bare token as text/plain (as `Accept: text/plain`)."),
]
Rejected = Annotated[
    str | None,
    Query(
        max_length=200,
        description="The `etag` of the token your API refused (as the `If-Match` header).",
    ),
]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=200,
        description="The `ETag` of the token your API refused: refresh only if it is still"
        " the current one, else get the newer token at once.",
    ),
]


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
    state directory of ``settings.state_dir`` (the CLI opens it first to report problems
    early), or none. *clock*, *rng* (refresh jitter) and *transport* (to the identity
    providers) exist for tests: a fake clock, a seeded generator, ``httpx.MockTransport``.
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
            manager = TokenManager(
                settings,
                client=client,
                clock=clock,
                rng=rng,
                store=store if store is not None else LocalStore(open_store(settings)),
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
            stop_redacting = add_secret_filter(manager.secret_values)
            try:
                yield
            finally:
                stop_redacting()
                stop_reloading()
                await manager.stop()
                runtime.manager = None

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
    app.add_middleware(GuardMiddleware, guard=guard)
    _add_error_handlers(app)
    _add_routes(app, runtime)
    add_docs_routes(app, guard)
    _add_metrics_route(app, guard, metrics)
    return app


class BrokerApp(FastAPI):
    """FastAPI with the security headers on every answer.

    :class:`SecurityHeadersMiddleware` goes around the whole middleware stack: added with
    ``add_middleware`` it would run inside Starlette's error middleware, and a 500 would
    leave without the headers.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeadersMiddleware(super().build_middleware_stack())


def _add_metrics_route(app: FastAPI, guard: Guard, metrics: Metrics) -> None:
    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        guard.authorize(request.headers.get("authorization"), None, "status")
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type, headers=NO_STORE)


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
    key = settings.state_key.get_secret_value().encode() if settings.state_key else None
    return StateStore(settings.state_dir, key=key)


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


def _add_routes(app: FastAPI, runtime: Runtime) -> None:
    guard = runtime.guard

    @app.get(
        "/token/{provider}",
        summary="The provider's current bearer token",
        response_model=None,
        responses={200: {"model": TokenBody, "content": {"text/plain": {}}}, **ERROR_RESPONSES},
    )
    async def get_token(
        provider: str, request: Request, min_valid: MinValid = None, format: Format = None
    ) -> Response:
        """Reads memory in steady state; waits only when no fitting token exists
        (cold start, or `min_valid` longer than the current token has left)."""
        client = guard.authorize(request.headers.get("authorization"), provider, "token")
        manager = runtime.engine()
        wanted = float(min_valid or 0)
        state = manager.get(provider)
        now = manager.now()
        token = state.token
        if token is None or not token.servable(now, wanted):
            token = await manager.token(provider, wanted)
            now = manager.now()
        runtime.served(client, provider)
        return _token_response(token, now, _wants_raw(request, format), state)

    @app.post(
        "/token/{provider}/refresh",
        summary="Force a refresh now and return the new token",
        response_model=None,
        responses={200: {"model": TokenBody, "content": {"text/plain": {}}}, **ERROR_RESPONSES},
    )
    async def refresh_token(
        provider: str,
        request: Request,
        format: Format = None,
        rejected: Rejected = None,
        if_match: IfMatch = None,
    ) -> Response:
        """For a caller whose API call was just refused with a token: send its `ETag`
        as `If-Match`. If a newer token exists it is the answer at once; otherwise
        the broker gets a new one (concurrent calls share one request to the
        identity provider). Caller-triggered requests are rate limited per provider
        (429 `refresh_rate_limited`)."""
        client = guard.authorize(request.headers.get("authorization"), provider, "token")
        manager = runtime.engine()
        token = await manager.force_refresh(provider, rejected=if_match or rejected or None)
        runtime.served(client, provider)
        return _token_response(
            token, manager.now(), _wants_raw(request, format), manager.get(provider)
        )

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        """Never touches an identity provider, so an IdP outage cannot get us restarted."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: every provider holds a servable token",
        response_model=ReadyBody,
        responses={503: {"model": ReadyBody, "description": "Some provider has no token"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        """Details per provider only for callers allowed to read status."""
        manager = runtime.engine()
        now = manager.now()
        providers = {name: _brief(p, now) for name, p in manager.providers.items()}
        ready = all(entry["state"] in SERVING_STATES for entry in providers.values())
        body: dict[str, Any] = {"ready": ready}
        try:
            guard.authorize(request.headers.get("authorization"), None, "status")
            body["providers"] = providers
        except Denied:
            pass  # a health checker without a key learns ready or not, nothing more
        return JSONResponse(body, status_code=200 if ready else 503, headers=NO_STORE)

    @app.get(
        "/providers",
        summary="Status of every provider",
        response_model=ProvidersBody,
    )
    async def providers(request: Request) -> JSONResponse:
        guard.authorize(request.headers.get("authorization"), None, "status")
        manager = runtime.engine()
        now = manager.now()
        wall = manager.wall()
        body = {"providers": {name: _status(p, now, wall) for name, p in manager.providers.items()}}
        return JSONResponse(body, headers=NO_STORE)


def _wants_raw(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "raw"
    return accepts_raw(request.headers.get("accept"))


def _token_response(token: Token, now: float, raw: bool, provider: Provider) -> Response:
    body, media_type, headers = token_payload(token, now, raw, provider)
    return Response(body, media_type=media_type, headers=headers)


def _error_body(provider: Provider) -> dict[str, Any] | None:
    error = provider.last_error
    if error is None or provider.consecutive_failures == 0:
        return None
    return {"code": error.code, "message": error.message}


def _brief(provider: Provider, now: float) -> dict[str, Any]:
    return {"state": provider.state(now), "error": _error_body(provider)}


def _status(provider: Provider, now: float, wall: float) -> dict[str, Any]:
    token = provider.token
    servable = provider.servable(now)
    error = provider.last_error
    next_at = provider.next_refresh_at
    return {
        "type": provider.kind,
        "state": provider.state(now),
        "expires_in": token.expires_in(now) if token is not None and servable else None,
        "expires_at": token.expires_at_text if token is not None else None,
        "last_refresh": rfc3339(provider.last_refresh_wall)
        if provider.last_refresh_wall is not None
        else None,
        "next_refresh_in": round(max(next_at - now, 0.0), 1) if next_at is not None else None,
        "next_refresh": rfc3339(wall + max(next_at - now, 0.0)) if next_at is not None else None,
        "refreshes": provider.refreshes,
        "failures": provider.failures,
        "consecutive_failures": provider.consecutive_failures,
        "has_refresh_token": provider.refresh_token is not None,
        "clock_skew": round(provider.clock_skew, 1) if provider.clock_skew is not None else None,
        "last_error": None
        if error is None
        else {
            "code": error.code,
            "message": error.message,
            "at": rfc3339(provider.last_error_wall)
            if provider.last_error_wall is not None
            else None,
        },
    }


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": code, "message": message})
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Denied)
    async def denied(request: Request, exc: Denied) -> Response:
        return _error(exc.status, exc.code, exc.message, exc.headers())

    @app.exception_handler(UnknownProviderError)
    async def unknown_provider(request: Request, exc: UnknownProviderError) -> Response:
        return _error(exc.status, exc.code, str(exc))

    @app.exception_handler(TokenUnavailableError)
    async def unavailable(request: Request, exc: TokenUnavailableError) -> Response:
        if exc.status == 422:  # asking again cannot help: no Retry-After
            return _error(exc.status, exc.code, str(exc))
        retry_after = str(max(1, math.ceil(exc.retry_after)))
        return _error(exc.status, exc.code, str(exc), {"Retry-After": retry_after})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = http_layer_code(exc.status_code)
        return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err.get("loc", ()) if part != "query")
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        code = ErrorCode.INVALID_PARAMETER
        return _error(code.status, code, "; ".join(problems))
