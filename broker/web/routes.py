"""The HTTP API's endpoints: token, forced refresh, liveness, readiness, provider status
and metrics, over the refresh engine of a :class:`~broker.web.runtime.Runtime`.

Route handlers never talk to an identity provider themselves; in steady state
``GET /token/{provider}`` is a dictionary lookup and a few bytes of JSON (and a warm one
rarely gets here at all: :mod:`broker.web.fastpath` answers it first).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from broker.core.tokens import Token
from broker.engine.provider import Provider
from broker.ops.metrics import Metrics
from broker.policy.states import SERVING_STATES
from broker.web.answers import NO_STORE, accepts_raw, token_payload
from broker.web.api_models import (
    TOKEN_RESPONSES,
    ProvidersBody,
    ReadyBody,
    error_responses,
)
from broker.web.runtime import Runtime
from broker.web.security import Denied, Guard
from broker.web.status import brief, status, store_status

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


def add_routes(app: FastAPI, runtime: Runtime) -> None:
    """The documented API: the token routes, ``/healthz``, ``/readyz`` and ``/providers``."""
    guard = runtime.guard

    @app.get(
        "/token/{provider}",
        summary="The provider's current bearer token",
        response_model=None,
        responses=TOKEN_RESPONSES,
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
        responses=TOKEN_RESPONSES,
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
        providers = {name: brief(p, now) for name, p in manager.providers.items()}
        ready = all(entry["state"] in SERVING_STATES for entry in providers.values())
        body: dict[str, Any] = {"ready": ready}
        try:
            guard.authorize(request.headers.get("authorization"), None, "status")
            body["providers"] = providers
            body["store"] = store_status(manager.store_status(), brief=True)
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
        body = {
            "providers": {name: status(p, now, wall) for name, p in manager.providers.items()},
            "store": store_status(manager.store_status()),
        }
        return JSONResponse(body, headers=NO_STORE)


def add_metrics_route(app: FastAPI, guard: Guard, metrics: Metrics) -> None:
    """``/metrics`` for Prometheus, for callers allowed status; not in the OpenAPI document."""

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        description="The Prometheus text format (OpenMetrics when asked for by `Accept`);"
        " for callers allowed status.",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **error_responses(401, 403),
        },
    )
    async def prometheus(request: Request) -> Response:
        guard.authorize(request.headers.get("authorization"), None, "status")
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type, headers=NO_STORE)


def _wants_raw(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "raw"
    return accepts_raw(request.headers.get("accept"))


def _token_response(token: Token, now: float, raw: bool, provider: Provider) -> Response:
    body, media_type, headers = token_payload(token, now, raw, provider)
    return Response(body, media_type=media_type, headers=headers)
