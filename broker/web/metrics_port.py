"""``metrics_listen``: Prometheus' own listener, where ``GET /metrics`` needs no client key.

As oauth2-proxy's ``--metrics-address`` and Vault Agent's telemetry listener: a scraper gets
the metrics without holding a key that could also read tokens. The listener's sockets are
served by the same uvicorn server as the broker's own (one event loop, one connection
guard, one graceful shutdown), and :class:`MetricsPort`, in front of the broker's app,
answers every request that arrived on one of them: ``/metrics`` and ``/healthz``, and
``404`` for anything else, so no token, status page or login is reachable there.

A request's listener is told by the address it was accepted on (ASGI's ``server``): a
metrics socket's own address and port, or, for a wildcard one (``0.0.0.0``), its port in
its address family. No other listening socket of the broker can have those (binding it
would have failed with "address already in use").

The request checks that matter without tokens stay: no browser (an ``Origin`` header, a
``Sec-Fetch-Site`` other than ``none``), and on a loopback listener a ``Host`` that names
this host (DNS rebinding: a web page whose name now resolves to 127.0.0.1). A listener on
another address (``allow_unauthenticated_network``) is scraped by whatever address reaches
it, a pod's IP say, so its ``Host`` is not checked.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.config.settings import BrokerSettings
from broker.core.addresses import WILDCARD_HOSTS, is_loopback_address
from broker.core.errors import ErrorCode
from broker.ops.metrics import Metrics
from broker.web.answers import NO_STORE
from broker.web.security import (
    RAW_SECURITY_HEADERS,
    Denied,
    Guard,
    host_names,
    named_host,
    send_denied,
)

LocalAddress = tuple[int, str, int]
"""A listening socket's address family, address and port."""

SERVED = ("/metrics", "/healthz")


class MetricsPort:
    """ASGI app: requests that came in on a metrics socket (*listening*) get the metrics
    of *metrics* without a key; every other request goes to *app* unchanged."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        listening: Sequence[LocalAddress],
        settings: BrokerSettings,
        guard: Guard,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.guard = guard
        self.metrics = metrics
        self._exact = frozenset((port, host) for _, host, port in listening)
        self._wildcard = frozenset(
            (family, port) for family, host, port in listening if host in WILDCARD_HOSTS
        )
        config = settings.metrics_listen
        self._check_host = config is None or is_loopback_address(config.host)
        self._own_names = frozenset(host_names([config.host] if config is not None else []))

    def on_metrics_listener(self, scope: Scope) -> bool:
        """Whether the request was accepted on a metrics socket."""
        server = scope.get("server")
        if not server or not isinstance(server[1], int):  # a Unix socket: never metrics
            return False
        host, port = str(server[0]), server[1]
        if (port, host) in self._exact:
            return True
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return (family, port) in self._wildcard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.on_metrics_listener(scope):
            await self.app(scope, receive, send)
            return
        try:
            self._check(scope)
        except Denied as denied:
            self.metrics.caller_denied(denied.code)
            await send_denied(_with_security_headers(send), denied)
            return
        path, method = scope["path"], scope["method"]
        if path not in SERVED:
            message = "the metrics listener serves GET /metrics and /healthz only"
            await _error(send, ErrorCode.NOT_FOUND, message)
        elif method not in ("GET", "HEAD"):
            await _error(send, ErrorCode.METHOD_NOT_ALLOWED, f"{method} is not allowed here")
        elif path == "/healthz":
            await self.app(scope, receive, send)
        else:
            accept = next((v for k, v in scope["headers"] if k == b"accept"), b"")
            body, content_type = self.metrics.render(accept.decode("latin-1"))
            headers = [(b"content-type", content_type.encode())]
            await _answer(send, 200, b"" if method == "HEAD" else body, headers, len(body))

    def _check(self, scope: Scope) -> None:
        host: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin" or (
                name == b"sec-fetch-site" and value not in (b"none", b"same-origin")
            ):
                msg = "requests from web pages are refused"
                raise Denied(ErrorCode.BROWSER_REQUEST, msg)
        if self._check_host and (
            host is None or named_host(host) not in self.guard.rules.allowed_hosts | self._own_names
        ):
            msg = "the Host header does not name this broker (see security.allowed_hosts)"
            raise Denied(ErrorCode.HOST_NOT_ALLOWED, msg)


def _with_security_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            message = {**message, "headers": [*headers, *RAW_SECURITY_HEADERS]}
        await send(message)

    return sending


async def _error(send: Send, code: ErrorCode, message: str) -> None:
    await send_denied(_with_security_headers(send), Denied(code, message))


async def _answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], length: int
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *headers,
                (b"content-length", b"%d" % length),
                *((k.lower().encode(), v.encode()) for k, v in NO_STORE.items()),
                *RAW_SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
