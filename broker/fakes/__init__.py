"""Fake identity providers that speak the real wire protocols, for tests and demo mode.

Each fake is a plain Starlette app backed by an in-memory, thread-safe token store. It follows
the team's provider protocol reference ("protocol doc" in the modules' docstrings; it lives
outside this repository) down to status codes, content types, field names and JSON types: its
§5 checklists, and its §0 RFC baseline where a provider says nothing.

By default the fakes are kind: they accept what a reasonable client sends and keep tokens alive
until they expire. "Wider world" switches (below) make them behave like less kind real servers.

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
    rotate by default (6.6). A person logs in with the 6.6 code flow (``GET``/``POST
    /authorize``, then ``/token`` ``grant_type=authorization_code`` with ``code``,
    ``code_verifier``, ``redirect_uri`` and the client) or the UI flow (``GET
    /ui/?client_id=..&redirect_url=..``, the form, then ``302 <redirect_url>#accessoken=<token>``,
    the seed doc's spelling). Demo: ``demo@example.com`` / ``demo-password`` and client
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
    removal. A person logs in at ``/api/rest/oauth2/auth``: authorization code with PKCE
    (``access_type=offline`` adds a refresh token; an untrusted service redeems with
    ``client_id`` alone) or implicit (``response_type=token`` →
    ``#access_token=..&token_type=Bearer&expires_in=..&scope=..&state=..``); ``openid`` adds
    an ID token (JWKS at ``/api/rest/oauth2/keys``). ``POST /api/rest/services?fields=id,secret``
    with ``Authorization: Bearer <admin_token>`` registers a service (``name``, ``homeUrl``,
    ``redirectUris``, ``trusted``, the flow switches, ...) that can log in at once. Demo:
    service ``hub.DEMO_SERVICE_ID`` / ``demo-service-secret``, user ``demo`` /
    ``demo-password``, scope ``0-0-0-0-0``, admin token ``demo-admin-token``.

``FakeOAuth2`` (:mod:`broker.fakes.oauth2`), a strict RFC 6749 server
    ``POST /oauth/token`` (``token_path``, taken verbatim: ``"/o/token/"`` serves only the
    slashed spelling) with ``client_credentials``, ``password`` and ``refresh_token``; Basic or
    body, never both; options for client-auth method, rotation, omitting ``expires_in`` and
    required extra parameters or headers. ``redirect_token_path_to`` (a path or URL) with
    ``redirect_status`` (default 308) makes the token path answer a redirect instead; a local
    target path then serves the token endpoint. ``GET /userinfo`` and ``/me``,
    ``POST /oauth/revoke``, RFC 8414 metadata (its ``token_endpoint`` is the path served), the
    same document at ``/.well-known/openid-configuration``. A person logs in with
    ``GET``/``POST /authorize`` (authorization code + PKCE, ``openid`` → an RS256 ``id_token``,
    JWKS at ``/jwks``) or the RFC 8628 device grant (``POST /device_authorization``, the
    person at ``GET``/``POST /device``, polling with
    ``grant_type=urn:ietf:params:oauth:grant-type:device_code``). Demo: ``demo-client`` /
    ``demo-secret``, the public client ``demo-public-client``, ``demo@example.com`` /
    ``demo-password``.

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
  the next requests to the token endpoint (or, with ``target="api"``, the "me" endpoints;
  ``"authorize"`` and ``"device"``, the login endpoints below);
  ``body=None`` sends the provider's own error body; ``.recover(target="token")`` drops the
  canned answers not yet sent.
- ``.quirks`` and one attribute per switch: the wider world, below.

A person's login (:mod:`broker.fakes.authorize`, :mod:`broker.fakes.device`)
===========================================================================

FakeOAuth2, FakeHub and FakeHiro serve an authorization endpoint (RFC 6749 §4.1 with RFC 7636
PKCE). ``GET`` validates the request and answers a small HTML login form (no scripts, no
external resources; ``#username``, ``#password``, buttons ``#allow`` and ``#deny``; the request
rides along in hidden fields); ``POST`` answers ``302`` to ``redirect_uri?code=..&state=..``,
``?error=access_denied&state=..`` on Deny, the RFC's error redirect for a bad request, and a
``400`` page (never a redirect) for an unknown ``client_id`` or a ``redirect_uri`` that is not
registered. A wrong password shows the form again with ``401``. ``prompt=none`` is
``login_required`` (the fakes keep no session). Codes are single use, bound to the client,
the ``redirect_uri`` and the challenge, and expire after ``code_ttl`` seconds of ``now``.
Options (constructor keywords and mutable attributes):

``redirect_uris``
    client id → registered redirect URIs (Hub: each ``HubService.redirect_uris``). Not listed:
    any loopback URI with a port (``http://127.0.0.1:<port>/...``, ``localhost``, ``[::1]``).
    A registered ``127.0.0.1`` URI matches on any port (RFC 8252 §7.3).
``public_clients``
    Client ids without a secret (FakeOAuth2 default ``demo-public-client``, FakeHiro none; on
    Hub, untrusted services): ``client_id`` in the body, PKCE always, only the code, device
    and refresh grants.
``code_ttl`` (60), ``require_pkce`` (on), ``allow_plain_pkce`` (off)
    A missing ``code_challenge_method`` means ``plain``, so it needs ``allow_plain_pkce`` too.
``code_reuse_revokes`` (on)
    A code presented again is ``invalid_grant`` and revokes every token issued from it, as
    RFC 6749 §4.1.2 recommends; off, it is only refused.
``issuer``
    ``iss`` of ID tokens and discovery; default the URL the request came to (Hub: with its
    ``base_path``). ID tokens (``openid`` in the scope; not HIRO) are RS256 JWTs from a key
    each fake generates on first use: ``iss``, ``sub`` (OAuth2: the username; Hub: the user
    id), ``aud`` (the client id), ``exp`` (issue time + ``ttl``), ``iat``, ``auth_time``,
    ``nonce`` (when the request had one) and ``at_hash``.
``device_code_ttl`` (600), ``device_interval`` (5), FakeOAuth2 only
    RFC 8628: user codes like ``BCDF-GHJK`` (typed in any case, dashes optional);
    ``authorization_pending`` until the person answers, ``slow_down`` (and 5 s more interval)
    when polled sooner than the interval after the previous poll, ``expired_token``,
    ``access_denied``, the tokens once. The page has ``#user_code``, ``#username``,
    ``#password``, ``#approve`` and ``#deny``.
``admin_token`` (``demo-admin-token``), FakeHub only
    The Bearer token service registration needs; another valid token is 403, none 401.

Helpers: ``.authorize_requests()`` (every request to an authorization endpoint, form and
answer), ``.issued_codes``, ``.jwks()``; FakeOAuth2 also ``.approve_device(user_code,
username)``, ``.deny_device(user_code)`` and ``.device_requests()``. ``fail_next(...,
target="authorize")`` (or ``"device"``) cans the answers of those endpoints.

Routing is strict on every fake: the other trailing-slash spelling of a path is the provider's
JSON 404 (recorded), never a redirect. HIRO and Aerion (Express) serve both spellings, as the
real ones do. Wrong methods get the provider's JSON 405 with ``Allow`` (Aerion's token
endpoint: node-oauth2-server's own 400).
Routes are built on the first access to ``.app``: set path options before it.

The wider world (:class:`broker.fakes.quirks.WorldQuirks`)
========================================================

Behaviours of real servers that are unkind to clients, each off by default. Every fake takes
them as ``quirks=WorldQuirks(...)`` and as keyword arguments that override ``quirks``; each is
also a mutable attribute (``fake.reuse_revokes_family = True``), and assigning
``fake.quirks = ...`` sets them all at once. ``WORLD_MODES`` names ready-made worlds:
``"kind"`` (all off), ``"revoke_on_refresh"``, ``"reuse_detection"``, ``"strict_basic"``,
``"echo_errors"``, ``"trailing_slash"`` (one switch each) and ``"hostile"`` (all on)::

    @pytest.mark.parametrize("mode", WORLD_MODES)
    def test_my_client(mode: str) -> None:
        fake = FakeOAuth2(quirks=WORLD_MODES[mode])

Token families: a login (password, client credentials) or a seeded refresh token starts a
family; every token a refresh derives from it belongs to it.

``revoke_previous_access_on_refresh``
    A refresh grant (HIRO ``/refresh`` and ``/token`` alike) makes every earlier access token of
    the family invalid at once: "me" answers 401, ``is_access_token_valid`` is False. All fakes;
    client-credentials tokens never refresh, so they are never affected.
``reuse_revokes_family``
    Presenting a refresh token that was rotated away revokes every access and refresh token of
    its family, answered with the provider's usual refused-refresh error (``invalid_grant``;
    HIRO HTTP 401). It takes precedence over options that keep a rotated token valid
    (``FakeOAuth2(revoke_rotated_refresh_tokens=False)``,
    ``FakeHiro(old_refresh_token_valid_after_rotation=True)``,
    ``FakeAerion(revoke_old_refresh_token=False)``): under reuse detection, using the old token
    again is reuse. Where nothing rotates (``rotate_refresh_tokens=False``; Hub, which never
    rotates) it never fires; HIRO's pre-6.6 rotation near expiry does count.
``echo_credentials_in_errors``
    Every error from a token endpoint (bad credentials, ``invalid_grant``, unsupported grant,
    ``fail_next`` with ``body=None``, ...) appends ``[request Authorization: <header value or
    (none)>] [request body: <raw body>]`` to the provider's description field:
    ``error_description`` (OAuth2, Hub, Aerion unwrapped), ``raw`` (Aerion wrapped),
    ``error.message`` (HIRO). Status, error code and headers stay the same; explicit
    ``fail_next`` bodies, successes and "me" errors are never touched. For leak tests.
``basic_form_encoded``
    Read ``Authorization: Basic`` strictly per RFC 6749 §2.3.1: id and secret are form-decoded
    after base64, so a secret such as ``s3cr+t:with %2B/and spaces`` works only if the client
    form-encoded it. Off, the verbatim spelling is accepted too. FakeOAuth2, FakeHub and HIRO's
    ``/token``; FakeAerion ignores it (node-oauth2-server reads Basic verbatim). The demo
    secrets are the same in both spellings: test this switch with a secret of your own.
``trailing_slash_token_path``
    FakeOAuth2 serves its token endpoint at ``token_path`` plus ``/`` (``/oauth/token/``, as
    Django servers do) and answers the bare path with its JSON 404; ``.served_token_path``
    says which. Ignored elsewhere: HIRO and Aerion serve both spellings, Hub has a fixed path.

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
[--ttl SECONDS] [--quirks MODE]`` prints one line with the base URL, the world mode (a
``WORLD_MODES`` name, default ``kind``) and the demo credentials.

To test expiry without sleeping, pass a mutable clock as ``now`` and move it forward.
"""

from broker.fakes.aerion import FakeAerion
from broker.fakes.base import FakeProvider
from broker.fakes.demo import FAKE_KINDS, FakeKind, demo_credentials, make_demo_fake
from broker.fakes.hiro import FakeHiro
from broker.fakes.hub import FakeHub, HubService
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.quirks import WORLD_MODES, QuirkOptions, WorldQuirks
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
