"""The hot path: a warm ``GET /token/<name>`` answered without FastAPI's machinery.

Every caller asks for its token all the time, so this one request is served
by a plain ASGI function in front of the FastAPI app: the same request checks
(:meth:`Guard.check_request`), the same caller authorization, the same body
and headers (:mod:`broker.web.answers`), the same audit line and metric. Whenever
anything is not the plain case (a query string, no warm token, a denied or
odd request, another route), the request goes to the FastAPI app unchanged,
which owns every error answer and the documented API. The fast path therefore
never decides anything the FastAPI route would not.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from broker.core.tokens import Token
from broker.web.answers import REFRESH_FAILED_HEADER, accepts_raw, token_payload
from broker.web.runtime import Runtime
from broker.web.security import RAW_SECURITY_HEADERS, Denied

PREFIX = "/token/"

HeaderKey = tuple[str, str, str | None]
"""What a token answer's headers depend on besides the token: provider, media type, failure."""


class TokenFastPath:
    """ASGI app: serves warm tokens itself, passes everything else to *app*.

    *runtime* is the one the app was built with (:func:`broker.web.app.create_app` makes both).
    ``served`` counts the answers it gave itself, so tests can tell which
    path answered a request.
    """

    def __init__(self, app: FastAPI, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self.served = 0
        self._headers: dict[HeaderKey, tuple[Token, list[tuple[bytes, bytes]]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope["query_string"]
            or not scope["path"].startswith(PREFIX)
            or not await self._serve(scope, send)
        ):
            await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, send: Send) -> bool:
        """Answer from memory and return True, or return False having sent nothing."""
        runtime = self.runtime
        manager = runtime.manager
        if manager is None:  # the lifespan has not run: the app answers
            return False
        guard = runtime.guard
        name = scope["path"][len(PREFIX) :]
        authorization = accept = None
        for key, value in scope["headers"]:
            # The first of repeated headers counts, as in Starlette's request.headers.get.
            if key == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif key == b"accept" and accept is None:
                accept = value.decode("latin-1")
        try:
            guard.check_request(scope)
            client = guard.authorize(authorization, name, "token")
        except Denied:
            return False
        # Only now, for a caller allowed to know: looked up earlier, an existing name would
        # take longer to refuse than a missing one, which tells the caller it exists.
        provider = manager.providers.get(name)
        if provider is None:
            return False
        now = manager.now()
        token = provider.token
        if token is None or not token.servable(now):
            return False
        body, media_type, headers = token_payload(token, now, accepts_raw(accept), provider)
        runtime.served(client, name)
        raw_headers = [
            (b"content-type", media_type.encode()),
            (b"content-length", b"%d" % len(body)),
            *self._raw_headers(name, token, media_type, headers),
        ]
        self.served += 1
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})
        return True

    def _raw_headers(
        self, name: str, token: Token, media_type: str, headers: dict[str, str]
    ) -> list[tuple[bytes, bytes]]:
        """The encoded headers, made once per token and failure state, not per request."""
        key = (name, media_type, headers.get(REFRESH_FAILED_HEADER))
        cached = self._headers.get(key)
        if cached is not None and cached[0] is token:
            return cached[1]
        # The security headers too: these answers never pass SecurityHeadersMiddleware.
        encoded = [
            *RAW_SECURITY_HEADERS,
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ]
        if len(self._headers) > 4096:
            self._headers.clear()  # entries of providers a reload removed; rebuilt on demand
        self._headers[key] = (token, encoded)
        return encoded
