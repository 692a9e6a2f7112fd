"""The OpenAPI document and the interactive docs: for callers allowed status, docs opt-in.

A script that runs on the broker's origin can ``fetch('/token/...')`` like any local
caller, so the docs page must run nothing the broker does not ship itself:

* ``/docs`` is off unless the config says ``docs: true`` (off, it answers as a route that
  does not exist: 404 ``not_found``);
* Swagger UI comes from the ``swagger-ui-bundle-v2`` package, pinned in ``pyproject.toml``,
  and is served from ``/docs/static/`` (FastAPI's "self-hosting JavaScript and CSS for
  docs" recipe): only the three files the page loads, never a CDN;
* the page's one inline script (Swagger UI's start-up call that FastAPI writes) is allowed
  by its SHA-256 in the page's Content-Security-Policy, so no other inline script, event
  handler or foreign script can run there.

``/openapi.json`` and ``/docs`` are for callers allowed status, as ``/providers`` is: a
client with ``status: true``, or every (loopback) caller when no clients are configured.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui_bundle import swagger_ui_path

from broker.web.answers import NO_STORE
from broker.web.security import Guard

DOCS_URL = "/docs"
STATIC_URL = "/docs/static"
OPENAPI_URL = "/openapi.json"

ASSET_DIRECTORY = Path(str(swagger_ui_path))
"""Swagger UI's distribution files, as installed with the package (no network at run time)."""

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
"""What the page loads; nothing else of the distribution is served (its index.html and
initializer point at a demo API elsewhere)."""

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def docs_page(title: str) -> tuple[bytes, str]:
    """The docs page and its Content-Security-Policy, made once per app."""
    page = get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=title,
        swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC_URL}/favicon-32x32.png",
        # No online validator badge: the spec is never sent anywhere.
        swagger_ui_parameters={"validatorUrl": None},
    ).body
    html = bytes(page)
    scripts = _INLINE_SCRIPT.findall(html.decode())
    hashes = " ".join(f"'sha256-{_digest(script)}'" for script in scripts)
    policy = (
        f"default-src 'self'; script-src 'self' {hashes};"
        # swagger-ui.css draws its icons as data: images: no request, no script.
        " img-src 'self' data:; frame-ancestors 'none'"
    )
    return html, policy


def _digest(script: str) -> str:
    return base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


def add_docs_routes(app: FastAPI, guard: Guard) -> None:
    """``/openapi.json`` always, ``/docs`` and its assets while the config enables them."""
    page, policy = docs_page(f"{app.title} - docs")

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        guard.authorize(request.headers.get("authorization"), None, "status")
        return JSONResponse(app.openapi(), headers=NO_STORE)

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs(request: Request) -> Response:
        _allow_docs(guard, request)
        headers = {**NO_STORE, "Content-Security-Policy": policy}
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    @app.get(STATIC_URL + "/{name}", include_in_schema=False)
    async def asset(name: str, request: Request) -> FileResponse:
        _allow_docs(guard, request)
        media_type = ASSETS.get(name)
        if media_type is None:
            raise StarletteHTTPException(404)
        return FileResponse(ASSET_DIRECTORY / name, media_type=media_type)


def _allow_docs(guard: Guard, request: Request) -> None:
    """404 while docs are off (as for a route that does not exist), else the status check."""
    if not guard.rules.docs:
        raise StarletteHTTPException(404)
    guard.authorize(request.headers.get("authorization"), None, "status")
