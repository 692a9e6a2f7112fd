"""Fake identity providers that speak the real wire protocols, for tests and demo mode.

Each fake is a plain Starlette app backed by an in-memory, thread-safe token store. It follows
``docs/provider-protocols.md`` (§5 checklists, §0 RFC baseline) down to status codes, content
types, field names and JSON types.

The fakes
=========

``FakeHiro`` (:mod:`broker.fakes.hiro`), HIRO / arago Auth API 6 and 6.6
    ``GET /api/version``; under ``/api/auth/<auth_version>`` (also ``/api/auth/6``,
    ``/api/auth/6.6``, ``/api/6/auth``): JSON ``POST /app`` and ``/refresh`` answering
    ``{_TOKEN (JWT-shaped), _APPLICATION, _IDENTITY, _IDENTITY_ID, expires-at (int ms),
    refresh_token, type: "Bearer"}``; form ``POST /token`` answering ``expires_in: "3600"`` (a
    string by default); ``POST /revoke`` → ``200 {}``; ``GET /me/account``. Dead or unknown
    refresh tokens and bad credentials → HTTP 401 ``{"error": {"message", "code"}}``, which is
    what makes arago's Python client fall back from ``/refresh`` to ``/app``. Refresh tokens
    rotate by default (6.6). Demo: ``demo@example.com`` / ``demo-password`` and client
    ``hiro.DEMO_CLIENT_ID`` / ``demo-client-secret``.

``FakeAerion`` (:mod:`broker.fakes.aerion`), Aerion (ex CoffeeCup), node-oauth2-server 2.x style
    Form ``POST /oauth2/token`` (``password``, ``refresh_token``), tenant from the
    ``companyurl`` / ``Origin`` / ``Referer`` / ``Referrer`` header, the ``<company>.`` host or
    the refresh token. Body ``{"token_type":"bearer","access_token","expires_in","refresh_token"}``
    in that order, 40-hex tokens, every refresh rotates and revokes the old token. Errors are
    wrapped ``{error, status, summary, raw}`` by default. ``GET /v1/users/me`` → ``{"user": ...}``
    or 401 (configurable 403). Demo: company ``acme``, ``demo@example.com`` / ``demo-password``;
    any client id matching ``^[a-z0-9-_]{3,40}$`` with any secret.

``FakeHub`` (:mod:`broker.fakes.hub`), JetBrains Hub, under an optional ``base_path``
    Form ``POST /api/rest/oauth2/token`` (query-string parameters too), Basic or body client
    auth; ``client_credentials`` (trusted services, no refresh token), ``password``
    (``access_type=offline`` adds a refresh token), ``refresh_token`` (never rotates: the
    response omits ``refresh_token`` and the old one keeps working). Scopes are service ids.
    ``GET /api/rest/users/me``, ``/api/rest/services/me``, OIDC discovery, admin refresh-token
    removal. Demo: service ``hub.DEMO_SERVICE_ID`` / ``demo-service-secret``, user ``demo`` /
    ``demo-password``, scope ``0-0-0-0-0``.

``FakeOAuth2`` (:mod:`broker.fakes.oauth2`), a strict RFC 6749 server
    ``POST /oauth/token`` (configurable) with ``client_credentials``, ``password`` and
    ``refresh_token``; Basic per §2.3.1 or body, never both; options for client-auth method,
    rotation, omitting ``expires_in`` and required extra parameters or headers.
    ``GET /userinfo`` and ``/me``, ``POST /oauth/revoke``, RFC 8414 metadata. Demo:
    ``demo-client`` / ``demo-secret``, ``demo@example.com`` / ``demo-password``.

Common surface (:class:`broker.fakes.base.FakeProvider`)
========================================================

Every fake takes keyword-only configuration with working defaults (``FakeHiro()`` just works),
including ``ttl`` (seconds, may be fractional; also a mutable attribute) and ``now`` (the
fake's clock, default ``time.time``). Tokens die exactly at issue time + ``ttl`` by that clock.

- ``.app``: the ASGI app.
- ``.requests``: every :class:`RecordedRequest` (method, path, query, lower-cased headers,
  form, json, wall-clock ``at``), including requests to unknown paths (answered with the
  provider's JSON 404); ``.token_requests(grant=None)`` only the token endpoint's,
  optionally of one grant (HIRO's ``/app`` counts as ``"password"``, ``/refresh`` as
  ``"refresh_token"``).
- ``.issued_access_tokens`` / ``.issued_refresh_tokens`` in issue order;
  ``.is_access_token_valid(t)`` / ``.is_refresh_token_valid(rt)``.
- ``.seed_refresh_token(username, ...)``: mint a refresh token out of band, as an SSO login
  would (Aerion: ``tenant=``; Hub and OAuth2: ``client_id=``, ``scope=``).
- ``.revoke_refresh_token(rt)``, ``.revoke_access_token(t)``.
- ``.fail_next(count, status, body=None, headers=None, *, target="token")``: canned answers for
  the next requests to the token endpoint (or, with ``target="api"``, the "me" endpoints);
  ``body=None`` sends the provider's own error body.

Running them
============

In sync tests::

    from broker.fakes import FakeHub, serve_in_thread

    fake = FakeHub(ttl=1.5)
    with serve_in_thread(fake.app) as base_url:     # "http://127.0.0.1:<free port>"
        ...                                          # drive the client under test
        assert fake.token_requests("refresh_token")

Inside an event loop (demo mode)::

    server = FakeServer(fake.app)
    base_url = await server.start()
    ...
    await server.stop()

From a shell: ``python -m broker.fakes {hiro,aerion,hub,oauth2} [--host 127.0.0.1] [--port 0]
[--ttl SECONDS]`` prints one line with the base URL and the demo credentials.

To test expiry without sleeping, pass a mutable clock as ``now`` and move it forward.
"""

from broker.fakes.aerion import FakeAerion
from broker.fakes.base import WORLD_MODES, FakeProvider, QuirkOptions, WorldQuirks
from broker.fakes.demo import FAKE_KINDS, FakeKind, demo_credentials, make_demo_fake
from broker.fakes.hiro import FakeHiro
from broker.fakes.hub import FakeHub, HubService
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.recording import RecordedRequest
from broker.fakes.server import FakeServer, serve, serve_in_thread

__all__ = [
    "FAKE_KINDS",
    "WORLD_MODES",
    "FakeAerion",
    "FakeHiro",
    "FakeHub",
    "FakeKind",
    "FakeOAuth2",
    "FakeProvider",
    "FakeServer",
    "HubService",
    "QuirkOptions",
    "RecordedRequest",
    "WorldQuirks",
    "demo_credentials",
    "make_demo_fake",
    "serve",
    "serve_in_thread",
]
