"""The routes of a person's login (``broker login``, :mod:`broker.engine.browser_login`).

For the CLI, with a client key that has the ``login`` right for the provider (or any local
process when no clients are configured), like every other API route:

* ``POST /login/{provider}``: start a login; answers its one-time link.
* ``POST /login/{provider}/device``: start a device login (RFC 8628); answers the user code
  and where to enter it, and polls the identity provider itself.
* ``GET /login/attempts/{id}?wait=N``: its outcome, waiting up to N seconds for it.
* ``POST /login/attempts/{id}/redirect``: the URL the browser was sent back to, pasted by a
  person whose browser could not reach the broker (``--no-browser``).
* ``POST /login/{provider}/refresh-token``: a refresh token given by hand.

For the browser, top-level navigations only (the guard lets them through, and nothing
else, see :meth:`broker.web.security.Guard.check_request`), no key: the link's id and the
login's state are the secrets:

* ``GET /login/start/{id}``: once; binds the login to this browser (a cookie) and sends it
  to the identity provider.
* ``GET /login/callback``: where the identity provider sends it back; a small page that
  says how it went. No token is ever shown to a browser.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from broker.core.addresses import local_url, origin_of
from broker.core.errors import ErrorCode, LoginError
from broker.engine.logins import LOGIN_TTL, LoginAttempt
from broker.protocols.authorize import read_redirect, redirect_of_url
from broker.web.answers import NO_STORE
from broker.web.api_models import error_responses
from broker.web.login_pages import FRAGMENT_PATH, fragment_page, result_page
from broker.web.runtime import Runtime

COOKIE_PATH = "/login"
MAX_WAIT = 60
"""Longest ``wait`` a caller may ask for (the CLI asks again)."""


COOKIE_PREFIX = "broker-login-"


def login_cookie(state: str) -> str:
    """The name of the cookie that binds a login to its browser: one per login (a person
    may have two going at once), named after a digest of its state."""
    return COOKIE_PREFIX + hashlib.sha256(state.encode()).hexdigest()[:16]


def add_login_routes(app: FastAPI, runtime: Runtime) -> None:
    guard = runtime.guard
    _fragment_route(app, runtime)

    @app.post(
        "/login/{provider}",
        summary="Start a person's login",
        status_code=201,
        responses=error_responses(401, 403, 404, 409, 502),
    )
    async def begin(provider: str, request: Request) -> JSONResponse:
        guard.authorize(request.headers.get("authorization"), provider, "login")
        manager = runtime.engine()
        attempt = await manager.logins.begin(
            manager.get(provider),
            default_redirect=local_url(manager.settings.host, manager.settings.port)
            + "/login/callback",
        )
        return JSONResponse(
            {
                "login": attempt.id,
                "url": f"{origin_of(attempt.redirect_uri)}/login/start/{attempt.id}",
                "redirect_uri": attempt.redirect_uri,
                "expires_in": int(LOGIN_TTL),
            },
            status_code=201,
            headers=NO_STORE,
        )

    @app.post(
        "/login/{provider}/device",
        summary="Start a device login",
        status_code=201,
        responses=error_responses(401, 403, 404, 409, 502),
    )
    async def begin_device(provider: str, request: Request) -> JSONResponse:
        guard.authorize(request.headers.get("authorization"), provider, "login")
        manager = runtime.engine()
        attempt, device = await manager.logins.begin_device(manager.get(provider))
        return JSONResponse(
            {
                "login": attempt.id,
                "user_code": device.user_code,
                "verification_uri": device.verification_uri,
                "verification_uri_complete": device.verification_uri_complete,
                "expires_in": int(device.expires_in),
                "interval": device.interval,
            },
            status_code=201,
            headers=NO_STORE,
        )

    @app.get(
        "/login/attempts/{login_id}",
        summary="A login's outcome",
        responses=error_responses(401, 403, 404),
    )
    async def outcome(
        login_id: str,
        request: Request,
        wait: Annotated[int, Query(ge=0, le=MAX_WAIT)] = 0,
    ) -> JSONResponse:
        manager = runtime.engine()
        attempt = manager.logins.attempts.get(login_id)
        guard.authorize(request.headers.get("authorization"), attempt.provider, "login")
        if wait and attempt.outcome == "pending":
            await manager.wait_for(attempt.done, min(wait, attempt.expires_at - manager.now()))
        if attempt.outcome == "pending" and manager.now() >= attempt.expires_at:
            attempt.finish("failed", "the login expired: run broker login again")
        return JSONResponse(_outcome(attempt), headers=NO_STORE)

    @app.post(
        "/login/attempts/{login_id}/redirect",
        summary="Complete a login by hand",
        responses=error_responses(401, 403, 404, 410, 502),
    )
    async def pasted(
        login_id: str, request: Request, body: Annotated[dict[str, Any], Body()]
    ) -> JSONResponse:
        logins = runtime.engine().logins
        attempt = logins.attempts.get(login_id)
        guard.authorize(request.headers.get("authorization"), attempt.provider, "login")
        url = body.get("url")
        if not isinstance(url, str):
            raise LoginError(
                'send {"url": "<the address the browser ended on>"}', code=ErrorCode.LOGIN_FAILED
            )
        redirect = redirect_of_url(url)
        taken = logins.attempts.take(redirect.state, login_id=login_id)
        await logins.finish(taken, redirect)
        return JSONResponse(_outcome(taken), headers=NO_STORE)

    @app.post(
        "/login/{provider}/refresh-token",
        summary="Give a provider a refresh token",
        responses=error_responses(401, 403, 404, 502),
    )
    async def seed(
        provider: str, request: Request, body: Annotated[dict[str, Any], Body()]
    ) -> JSONResponse:
        guard.authorize(request.headers.get("authorization"), provider, "login")
        manager = runtime.engine()
        target = manager.get(provider)
        value = body.get("refresh_token")
        if not isinstance(value, str) or not value.strip():
            raise LoginError('send {"refresh_token": "..."}', code=ErrorCode.LOGIN_FAILED)
        await manager.logins.seed(target, value.strip())
        return JSONResponse(
            {"outcome": "ready", "message": f"provider {provider!r} is ready"}, headers=NO_STORE
        )

    @app.get("/login/start/{login_id}", include_in_schema=False)
    async def start(login_id: str) -> Response:
        try:
            attempt, browser = runtime.engine().logins.attempts.open(login_id)
        except LoginError as exc:
            return result_page("This login link cannot be used", str(exc), exc.status)
        answer = RedirectResponse(attempt.authorize_url, status_code=303, headers=NO_STORE)
        answer.set_cookie(
            login_cookie(attempt.secrets.state),
            browser,
            max_age=int(LOGIN_TTL),
            path=COOKIE_PATH,
            httponly=True,
            samesite="lax",  # sent on the identity provider's top-level redirect back
            secure=attempt.redirect_uri.startswith("https://"),
        )
        return answer

    @app.get("/login/callback", include_in_schema=False)
    async def callback(request: Request) -> Response:
        logins = runtime.engine().logins
        redirect = read_redirect(request.query_params)
        if redirect.state is None and redirect.code is None and redirect.error is None:
            return fragment_page()  # HIRO's UI flow: what came back is in the fragment
        cookie = request.cookies.get(login_cookie(redirect.state)) if redirect.state else None
        try:
            attempt = logins.attempts.take(redirect.state, browser=cookie)
            await logins.finish(attempt, redirect)
        except LoginError as exc:
            return result_page("The login did not complete", str(exc), exc.status)
        answer = result_page(
            "Logged in",
            f"The broker holds a session for {attempt.provider!r} now and keeps it fresh."
            " You can close this window.",
            200,
        )
        answer.delete_cookie(login_cookie(attempt.secrets.state), path=COOKIE_PATH)
        return answer


def _fragment_route(app: FastAPI, runtime: Runtime) -> None:
    @app.post(FRAGMENT_PATH, include_in_schema=False)
    async def fragment(request: Request, body: Annotated[dict[str, Any], Body()]) -> Response:
        logins = runtime.engine().logins
        bindings = [v for k, v in request.cookies.items() if k.startswith(COOKIE_PREFIX)]
        try:
            attempt = logins.attempts.take_by_browser(bindings)
            token, error = body.get("accessoken"), body.get("error")
            await logins.finish_fragment(
                attempt,
                token if isinstance(token, str) else None,
                error if isinstance(error, str) else None,
            )
        except LoginError as exc:
            return JSONResponse(
                {"outcome": "failed", "message": str(exc)}, status_code=exc.status, headers=NO_STORE
            )
        answer = JSONResponse(_outcome(attempt), headers=NO_STORE)
        answer.delete_cookie(login_cookie(attempt.secrets.state), path=COOKIE_PATH)
        return answer


def _outcome(attempt: LoginAttempt) -> dict[str, Any]:
    return {"provider": attempt.provider, "outcome": attempt.outcome, "message": attempt.message}
