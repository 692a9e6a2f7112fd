"""Who may take a token: request checks against SSRF, DNS rebinding and browsers, and callers.

Three parts, each cheap enough for the token hot path:

* :class:`GuardMiddleware` (pure ASGI) checks every request but ``/healthz``
  before routing: the ``Host`` header must name this broker (DNS rebinding),
  no proxy headers (SSRF through a forwarding proxy), no browser marks
  (``Origin``, cross-site ``Sec-Fetch-Site``), the optional required header
  (as cloud metadata servers do) and, when no clients are configured, a
  loopback peer.
* :class:`SecurityHeadersMiddleware` puts :data:`SECURITY_HEADERS` on every answer: a
  Content-Security-Policy that lets nothing from elsewhere run on the broker's origin
  (a script there could read tokens), ``nosniff`` and no framing.
* :meth:`Guard.authorize` checks the caller's key (``Authorization: Bearer``,
  constant-time comparison) against the configured clients and the providers
  each may read. It runs before the provider is looked up, so an
  unauthenticated caller learns nothing about which providers exist.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.config.settings import BrokerSettings
from broker.core.addresses import is_loopback_address
from broker.core.errors import ApiError, ErrorCode
from broker.web.peers import PeerCredentials, current_peer

Need = Literal["token", "status", "login"]

PROXY_HEADERS = frozenset(
    {
        # The standard and de facto forwarding headers.
        b"forwarded",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-proto",
        b"x-forwarded-server",
        b"x-real-ip",
        # The client address as CDNs and load balancers pass it on.
        b"x-client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        # The original path as rewriting front ends (IIS, some gateways) pass it on.
        b"x-original-url",
        b"x-rewrite-url",
    }
)
"""A request that passed through a proxy was not made by a local process itself.

Lower case: the HTTP servers hand header names to ASGI apps in lower case, whatever the
spelling on the wire."""

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

CONTENT_SECURITY_POLICY = "default-src 'self'; frame-ancestors 'none'"
"""For every answer but the docs page (:mod:`broker.web.docs` widens it by what that page needs).

A page of this origin that runs a script can read every token (same origin), so nothing
from elsewhere may run here, and no other site may frame the broker's pages."""

SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),  # a token sent as text/plain is never run as script
    ("X-Frame-Options", "DENY"),  # frame-ancestors for browsers that predate CSP 2
)
RAW_SECURITY_HEADERS = tuple((k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS)

MAX_HEADER_BYTES = 16 * 1024
"""Legitimate callers send a few hundred bytes of headers; refuse floods early."""


class Denied(ApiError):
    """A request the broker refuses; carries the HTTP answer (its status: the code's)."""

    def __init__(self, code: ErrorCode, message: str, *, challenge: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.challenge = challenge

    def headers(self) -> dict[str, str]:
        headers = {"Cache-Control": "no-store"}
        if self.challenge:
            headers["WWW-Authenticate"] = 'Bearer realm="broker"'
        return headers


@dataclass(frozen=True)
class Client:
    name: str
    key: bytes | None
    providers: frozenset[str]
    status: bool
    uid: int | None = None
    login: bool = False
    gid: int | None = None
    exe: str | None = None

    def __repr__(self) -> str:
        return f"Client(name={self.name!r}, providers={sorted(self.providers)!r})"

    def may_read(self, provider: str) -> bool:
        return "*" in self.providers or provider in self.providers

    @property
    def by_peer(self) -> bool:
        return self.uid is not None or self.gid is not None

    @property
    def specificity(self) -> int:
        """How many of the caller's credentials this client names (the most specific wins)."""
        return sum(attr is not None for attr in (self.uid, self.gid, self.exe))

    def matches_peer(self, peer: PeerCredentials | None) -> bool:
        """Whether *peer* is this client's caller: every unix_* it names must match."""
        return (
            peer is not None
            and self.by_peer
            and (self.uid is None or self.uid == peer.uid)
            and (self.gid is None or self.gid == peer.gid)
            and (self.exe is None or self.exe == peer.exe)
        )


@dataclass(frozen=True)
class AccessRules:
    """Who may call and from where, built from the settings; replaced whole on a reload."""

    clients: tuple[Client, ...]
    loopback_only: bool
    allowed_hosts: frozenset[str]
    required_header: tuple[bytes, bytes] | None
    docs: bool
    """Whether ``/docs`` is served (to callers allowed status)."""

    @classmethod
    def from_settings(cls, settings: BrokerSettings) -> AccessRules:
        security = settings.security
        clients = tuple(
            Client(
                name=name,
                key=None if client.key is None else client.key.get_secret_value().encode(),
                providers=frozenset(client.providers),
                status=client.status,
                login=client.login,
                uid=client.unix_uid,
                gid=client.unix_gid,
                exe=client.unix_exe,
            )
            for name, client in settings.clients.items()
        )
        header = security.require_header
        return cls(
            clients=clients,
            loopback_only=not clients and not security.allow_unauthenticated_network,
            allowed_hosts=frozenset(
                host_names([*LOOPBACK_NAMES, settings.host, *security.allowed_hosts])
            ),
            required_header=(
                (header.name.lower().encode(), header.value.encode())
                if header is not None
                else None
            ),
            docs=settings.docs,
        )


class Guard:
    """The broker's access rules. :meth:`update` swaps them in one assignment, so a
    reload takes effect for every request that starts after it: a revoked key is
    refused from that moment on."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.rules = AccessRules.from_settings(settings)

    def update(self, settings: BrokerSettings) -> None:
        self.rules = AccessRules.from_settings(settings)

    @property
    def clients(self) -> tuple[Client, ...]:
        return self.rules.clients

    # -- every request ------------------------------------------------------

    def check_request(self, scope: Scope) -> None:
        """Raise Denied unless the request may reach any route at all."""
        rules = self.rules
        host: bytes | None = None
        size = 0
        navigation = _login_navigation(scope)
        origin: bytes | None = None
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"host":
                host = value
            elif name in PROXY_HEADERS:
                msg = "requests that came through a proxy are refused"
                raise Denied(ErrorCode.PROXIED_REQUEST, msg)
            elif name == b"origin":
                origin = value
            elif name == b"sec-fetch-site" and value not in (b"none", b"same-origin"):
                if not navigation:
                    msg = "cross-site requests from browsers are refused"
                    raise Denied(ErrorCode.BROWSER_REQUEST, msg)
            elif navigation and (
                (name == b"sec-fetch-mode" and value != b"navigate")
                or (name == b"sec-fetch-dest" and value != b"document")
            ):
                msg = "the login pages accept top-level navigations only"
                raise Denied(ErrorCode.BROWSER_REQUEST, msg)
        if origin is not None and not (
            # The one page of the broker's own that posts: HIRO's UI flow hands over the
            # token it found in the fragment, from the broker's origin to the broker.
            _login_fragment_post(scope) and host is not None and origin == b"http://" + host
        ):
            msg = "requests from web pages are refused (Origin header present)"
            raise Denied(ErrorCode.BROWSER_REQUEST, msg)
        if size > MAX_HEADER_BYTES:
            msg = f"request headers larger than {MAX_HEADER_BYTES} bytes are refused"
            raise Denied(ErrorCode.HEADERS_TOO_LARGE, msg)
        if host is None or named_host(host) not in rules.allowed_hosts:
            msg = "the Host header does not name this broker (see security.allowed_hosts)"
            raise Denied(ErrorCode.HOST_NOT_ALLOWED, msg)
        if rules.required_header is not None:
            name, wanted = rules.required_header
            if not any(n == name and hmac.compare_digest(v, wanted) for n, v in scope["headers"]):
                msg = f"the {name.decode()} header is required"
                raise Denied(ErrorCode.REQUIRED_HEADER_MISSING, msg)
        if rules.loopback_only and not _is_loopback(scope.get("client")):
            msg = "no clients are configured, so only this host's processes may call"
            raise Denied(ErrorCode.NOT_LOOPBACK, msg)

    # -- routes that need a caller ------------------------------------------

    def authorize(self, authorization: str | None, provider: str | None, need: Need) -> str:
        """The caller's client name; raise Denied when it may not do *need* (on *provider*).

        A caller on the Unix socket is also known by its credentials (:data:`current_peer`,
        set for each of that connection's requests). Without configured clients every
        (loopback or Unix socket) caller is ``anonymous``.
        """
        clients = self.rules.clients
        if not clients:
            return "anonymous"
        peer = current_peer.get()
        client = _client_for(clients, authorization, peer)
        if client is None:
            raise Denied(ErrorCode.UNAUTHORIZED, _who_is_unknown(peer), challenge=True)
        if need == "status":
            if not client.status:
                msg = f"client {client.name!r} may not read the broker's status"
                raise Denied(ErrorCode.FORBIDDEN, msg)
        elif need == "login":
            if not client.login or provider is None or not client.may_read(provider):
                msg = f"client {client.name!r} may not start a login for this provider"
                raise Denied(ErrorCode.FORBIDDEN, msg)
        elif provider is None or not client.may_read(provider):
            msg = f"client {client.name!r} may not read this provider's token"
            raise Denied(ErrorCode.FORBIDDEN, msg)
        return client.name


def _client_for(
    clients: tuple[Client, ...], authorization: str | None, peer: PeerCredentials | None
) -> Client | None:
    """The client a key names (whose unix_* must also match, if it has any); without a
    key, the most specific key-less client the Unix socket caller matches."""
    if authorization:
        if authorization[:7].lower() != "bearer ":
            return None
        client = _client_by_key(clients, authorization)
        if client is None or (client.by_peer and not client.matches_peer(peer)):
            return None
        return client
    matches = [client for client in clients if client.key is None and client.matches_peer(peer)]
    # Equally specific matches: the first in the file (max keeps the first of equals).
    return max(matches, key=lambda client: client.specificity, default=None)


def _client_by_key(clients: tuple[Client, ...], authorization: str) -> Client | None:
    # Exactly the configured key: RFC 6750 allows more spaces after the scheme, nothing
    # else around the key (the HTTP parser has dropped trailing spaces and tabs already).
    presented = authorization[7:].lstrip(" ").encode()
    found = None
    # Compare against every key, in constant time each, so neither the
    # comparison nor the loop reveals how much of a key was right.
    for client in clients:
        if client.key is not None and hmac.compare_digest(presented, client.key):
            found = client
    return found


def _who_is_unknown(peer: PeerCredentials | None) -> str:
    if peer is None:
        return "a client key is required: Authorization: Bearer <key>"
    return (
        f"no client is configured for uid {peer.uid}, gid {peer.gid} on the Unix socket;"
        " configure one (unix_uid) or send Authorization: Bearer <key>"
    )


class GuardMiddleware:
    """Applies :meth:`Guard.check_request` to every HTTP request but liveness."""

    def __init__(
        self, app: ASGIApp, guard: Guard, on_denied: Callable[[str], None] | None = None
    ) -> None:
        self.app = app
        self.guard = guard
        self.on_denied = on_denied
        """Told each refusal's code (the metrics count them)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/healthz":
            try:
                self.guard.check_request(scope)
            except Denied as denied:
                if self.on_denied is not None:
                    self.on_denied(denied.code)
                await send_denied(send, denied)
                return
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` to every HTTP answer that does not set its own.

    It wraps the whole app, Starlette's error middleware included, so that every answer
    carries them: routes, error handlers, the guard's denials, 404s and 500s.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [h for h in RAW_SECURITY_HEADERS if h[0] not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def send_denied(send: Send, denied: Denied) -> None:
    body = json.dumps({"error": denied.code, "message": denied.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in denied.headers().items()]
    await send({"type": "http.response.start", "status": denied.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


LOGIN_NAVIGATIONS = ("/login/start/", "/login/callback")
"""The only pages a browser may open (a person's login): its one-time link, and where the
identity provider sends it back, both cross-site top-level navigations. Nothing there
serves a token."""


def _login_navigation(scope: Scope) -> bool:
    path = scope.get("path", "")
    return scope.get("method") == "GET" and (
        path.startswith(LOGIN_NAVIGATIONS[0]) or path == LOGIN_NAVIGATIONS[1]
    )


LOGIN_FRAGMENT = "/login/fragment"
"""Where the broker's own login page posts what HIRO's UI flow left in the fragment."""


def _login_fragment_post(scope: Scope) -> bool:
    return scope.get("method") == "POST" and scope.get("path", "") == LOGIN_FRAGMENT


def _is_loopback(client: object) -> bool:
    if client is None:  # a Unix socket: only local processes can connect
        return True
    host = client[0] if isinstance(client, tuple | list) else None
    return isinstance(host, str) and is_loopback_address(host)


def named_host(header: bytes) -> str:
    """The host name a ``Host`` header names, without its port, in lower case."""
    return _strip_port(header.decode("latin-1")).lower()


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [::1]:8181
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def host_names(names: Iterable[str]) -> Iterable[str]:
    """*names* as a Host header is compared with them; wildcard listen addresses left out."""
    for name in names:
        name = name.strip().lower()
        if name and name not in ("0.0.0.0", "::"):  # wildcard binds are not names
            yield name.strip("[]")
