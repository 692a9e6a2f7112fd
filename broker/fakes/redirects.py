"""Redirect URIs of authorization requests: which are allowed, and the redirect itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

from starlette.responses import Response

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _host_port(uri: str) -> tuple[str, str | None, int | None, str] | None:
    """(scheme, host, port, uri without port) of an absolute URI; ``None`` when unusable."""
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc or parts.fragment or parts.username is not None:
        return None  # RFC 6749 §3.1.2: absolute, no fragment; no credentials either
    host = parts.hostname
    netloc = f"[{host}]" if host and ":" in host else host or ""
    return parts.scheme, host, port, urlunsplit(parts._replace(netloc=netloc))


def redirect_allowed(uri: str, registered: Sequence[str] | None) -> bool:
    """Whether ``uri`` may receive the answer of an authorization request.

    ``registered=None`` (nothing registered) allows any loopback URI with a port:
    ``http://127.0.0.1:<port>/...``, ``http://localhost:<port>/...``, ``http://[::1]:<port>/...``
    (RFC 8252 §7.3, native apps). Otherwise ``uri`` must equal a registered one, except that a
    registered ``127.0.0.1`` or ``[::1]`` URI matches on any port (RFC 8252 §7.3 again).
    """
    parsed = _host_port(uri)
    if parsed is None:
        return False
    scheme, host, port, portless = parsed
    if registered is None:
        return scheme == "http" and host in LOOPBACK_HOSTS and port is not None
    for candidate in registered:
        if uri == candidate:
            return True
        other = _host_port(candidate)
        if other is not None and other[1] in ("127.0.0.1", "::1") and other[3] == portless:
            return other[0] == scheme == "http"
    return False


def redirect_to(uri: str, params: Mapping[str, str | None], *, fragment: bool = False) -> Response:
    """``302`` to ``uri`` with ``params`` in its query (keeping its own, §3.1.2) or fragment."""
    encoded = urlencode([(k, v) for k, v in params.items() if v is not None])
    if fragment:
        location = f"{uri}#{encoded}"
    else:
        parts = urlsplit(uri)
        query = f"{parts.query}&{encoded}" if parts.query else encoded
        location = urlunsplit(parts._replace(query=query))
    return Response(status_code=302, headers={"location": location, "cache-control": "no-store"})
