"""Every error answer of the FastAPI app: one JSON shape, ``{"error": code, "message": ...}``.

The exceptions the routes, the guard and the framework raise become their documented status
and stable code (see :class:`~broker.core.errors.ErrorCode`), never cached; an unavailable
token says when to ask again (``Retry-After``) unless asking again cannot help.
"""

from __future__ import annotations

import json
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.core.errors import (
    ErrorCode,
    LoginError,
    TokenUnavailableError,
    UnknownProviderError,
    http_layer_code,
)
from broker.ops.metrics import Metrics
from broker.web.answers import NO_STORE
from broker.web.security import Denied


def add_error_handlers(app: FastAPI, metrics: Metrics | None = None) -> None:
    """Answer the broker's errors, and the framework's own, in the broker's shape (and
    count the callers refused, in *metrics*)."""

    @app.exception_handler(Denied)
    async def denied(request: Request, exc: Denied) -> Response:
        if metrics is not None:
            metrics.caller_denied(exc.code)
        return _error(exc.status, exc.code, exc.message, exc.headers())

    @app.exception_handler(UnknownProviderError)
    async def unknown_provider(request: Request, exc: UnknownProviderError) -> Response:
        return _error(exc.status, exc.code, str(exc))

    @app.exception_handler(LoginError)
    async def login_error(request: Request, exc: LoginError) -> Response:
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


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": code, "message": message})
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )
