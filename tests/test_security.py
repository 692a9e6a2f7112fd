"""Every access rule, attacked through real HTTP against a running broker."""

from __future__ import annotations

import hmac
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from broker.config.load import inline_secret_warnings
from broker.core.errors import ConfigError
from broker.engine.provider import Provider
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from broker.web.app import create_app
from broker.web.fastpath import TokenFastPath
from broker.web.security import Guard
from tests.support import running_broker, serving, settings_from

READER_KEY = "reader-key-7f3a9c2e41d0"
OTHER_KEY = "other-key-0b8e5d6f2a91c"
OPS_KEY = "ops-key-5c4b3a2918e7f6"

PROVIDERS = """
providers:
  alpha:
    type: oauth2
    token_url: "{url}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret
  beta:
    type: oauth2
    token_url: "{url}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret
"""

CLIENTS = f"""
clients:
  reader:
    key: {READER_KEY}
    providers: [alpha]
  other:
    key: {OTHER_KEY}
    providers: ["*"]
  ops:
    key: {OPS_KEY}
    status: true
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def broker(extra: str = CLIENTS) -> Iterator[tuple[httpx.Client, FakeOAuth2]]:
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=300)
    with (
        serve_in_thread(fake.app) as url,
        running_broker(settings_from(extra + PROVIDERS.format(url=url))) as client,
    ):
        yield client, fake


@contextmanager
def broker_and_fast_path(extra: str = CLIENTS) -> Iterator[tuple[httpx.Client, TokenFastPath]]:
    """As :func:`broker`, yielding the fast path (``served`` says which path answered)."""
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=300)
    with (
        serve_in_thread(fake.app) as url,
        serving(settings_from(extra + PROVIDERS.format(url=url))) as (client, fast),
    ):
        yield client, fast


# -- callers ---------------------------------------------------------------------------


def test_client_keys_decide_who_reads_what() -> None:
    """No key 401, wrong key 401, another provider 403, own provider 200."""
    with broker() as (client, fake):
        missing = client.get("/token/alpha")
        assert missing.status_code == 401
        assert missing.json()["error"] == "unauthorized"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/token/alpha", headers=bearer("not-a-key-at-all-x")).status_code == 401
        assert client.get("/token/alpha", headers={"Authorization": READER_KEY}).status_code == 401
        forbidden = client.get("/token/beta", headers=bearer(READER_KEY))
        assert forbidden.status_code == 403
        assert forbidden.json()["error"] == "forbidden"
        ok = client.get("/token/alpha", headers=bearer(READER_KEY))
        assert ok.status_code == 200
        assert ok.json()["access_token"] in fake.issued_access_tokens
        assert client.get("/token/beta", headers=bearer(OTHER_KEY)).status_code == 200


def test_unauthenticated_callers_learn_nothing_about_providers() -> None:
    """An existing and a missing provider look the same without a key."""
    with broker() as (client, _):
        exists = client.get("/token/alpha")
        missing = client.get("/token/nope")
        assert (exists.status_code, exists.json()) == (missing.status_code, missing.json())
        # A client limited to some providers cannot probe the others either.
        limited = client.get("/token/nope", headers=bearer(READER_KEY))
        assert (
            limited.status_code == client.get("/token/beta", headers=bearer(READER_KEY)).status_code
        )
        assert client.get("/token/nope", headers=bearer(OTHER_KEY)).status_code == 404


class LookupCountingTable(dict[str, Provider]):
    """The manager's provider table, recording every name looked up in it."""

    def __init__(self, table: dict[str, Provider]) -> None:
        super().__init__(table)
        self.lookups: list[str] = []

    def get(self, key: str, default: Provider | None = None) -> Provider | None:  # type: ignore[override]
        self.lookups.append(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Provider:
        self.lookups.append(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.lookups.append(str(key))
        return super().__contains__(key)


def answer(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    """What a caller sees, but the headers that name the moment (Date) or the server."""
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "server")}
    return response.status_code, headers, response.content


def test_no_provider_lookup_before_the_caller_is_authorized() -> None:
    """Callers without a valid key get the same bytes for an existing and a missing name,
    and neither path (the fast path's plain GET, the routes) looks either name up: so
    both names take the same code path and the same time."""
    callers = [{}, bearer("not-a-key-at-all-x"), {"Authorization": READER_KEY}]
    requests = [
        ("GET", "/token/{}"),
        ("GET", "/token/{}?format=json"),
        ("POST", "/token/{}/refresh"),
    ]
    with broker_and_fast_path() as (client, fast):
        manager = fast.runtime.engine()
        table = LookupCountingTable(manager.providers)
        manager.providers = table
        for headers in callers:
            for method, path in requests:
                exists = client.request(method, path.format("alpha"), headers=headers)
                missing = client.request(method, path.format("nope"), headers=headers)
                assert exists.status_code == 401
                assert answer(exists) == answer(missing)
        assert table.lookups == []
        assert fast.served == 0
        # The table does see lookups once a caller is known (so the count above means it).
        assert client.get("/token/alpha", headers=bearer(READER_KEY)).status_code == 200
        assert table.lookups == ["alpha"]
        assert fast.served == 1


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured key is checked with hmac.compare_digest, whichever matches."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    # The guard alone, in this thread: no server thread runs while hmac is patched.
    guard = Guard(settings_from(CLIENTS + PROVIDERS.format(url="http://127.0.0.1:9")))
    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert guard.authorize(f"Bearer {READER_KEY}", "alpha", "token") == "reader"
    monkeypatch.undo()
    keys = {b for _, b in compared}
    assert keys == {READER_KEY.encode(), OTHER_KEY.encode(), OPS_KEY.encode()}


@pytest.mark.parametrize(
    "presented",
    [
        READER_KEY.encode() + b"\xa0",  # no-break space: str.strip() removes it
        b"\xa0" + READER_KEY.encode(),
        READER_KEY.encode() + b"\x85",  # next line: str.strip() removes it too
        READER_KEY.encode()[:-1],
        READER_KEY.encode() + b"x",
    ],
)
def test_a_key_is_compared_exactly_as_configured(presented: bytes) -> None:
    """Over real HTTP, on the fast path, the routes and status: a key with anything around
    it is no key. (These bytes pass the HTTP parser; trailing spaces and tabs it drops, as
    RFC 9110 says, and control characters it refuses.)"""
    with broker_and_fast_path() as (client, fast):
        authorization = {b"Authorization": b"Bearer " + presented}
        for path in ("/token/alpha", "/token/alpha?format=json", "/providers"):
            response = client.get(path, headers=authorization)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"] == "unauthorized"
        assert client.post("/token/alpha/refresh", headers=authorization).status_code == 401
        assert fast.served == 0
        # The key itself, after one or more spaces (RFC 6750: "Bearer" 1*SP token), is served.
        for spaces in (" ", "   "):
            exact = {"Authorization": f"Bearer{spaces}{READER_KEY}"}
            assert client.get("/token/alpha", headers=exact).status_code == 200
        assert fast.served == 2


def raw_status(base_url: httpx.URL, request: bytes) -> bytes:
    """Send *request* as it is (no client library's checks) and return the status line."""
    with socket.create_connection((base_url.host, base_url.port or 80), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def test_what_the_http_parser_does_with_bytes_after_a_key() -> None:
    """The boundary of the test above, byte for byte over a socket: trailing spaces and
    tabs are not part of a header value (RFC 9110 5.5), so the parser drops them and the
    broker sees the key alone; control characters the parser refuses (400); anything
    else reaches the broker, which refuses it (401)."""
    expected = {b" ": b"200", b"\t": b"200", b" \t ": b"200", b"\x0b": b"400", b"\x00": b"400"}
    expected |= {b"\xa0": b"401", b"\x85": b"401", b" x": b"401"}
    with broker() as (client, _):
        for tail, status in expected.items():
            request = (
                b"GET /providers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + OPS_KEY.encode() + tail + b"\r\n"
                b"Connection: close\r\n\r\n"
            )
            assert raw_status(client.base_url, request).split(b" ")[1] == status, tail


@pytest.mark.anyio
@pytest.mark.parametrize("around", [" ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1f", "\x00"])
async def test_whitespace_and_controls_around_a_key_are_refused(around: str) -> None:
    """What the HTTP parser would drop or refuse, handed to the app directly: the key
    comparison itself accepts nothing but the key."""
    settings = settings_from(CLIENTS + PROVIDERS.format(url="http://127.0.0.1:9"))
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as caller:

        async def status(authorization: str) -> int:
            headers = {b"Authorization": authorization.encode("latin-1")}
            return (await caller.get("/metrics", headers=headers)).status_code

        assert await status(f"Bearer {OPS_KEY}") == 200
        assert await status(f"Bearer {OPS_KEY}{around}") == 401
        # More spaces after the scheme are allowed (RFC 6750: "Bearer" 1*SP token).
        assert await status(f"Bearer {around}{OPS_KEY}") == (200 if around == " " else 401)


def test_status_needs_its_own_permission() -> None:
    """/providers needs a status client; /readyz tells others only ready or not."""
    with broker() as (client, _):
        assert client.get("/providers").status_code == 401
        assert client.get("/providers", headers=bearer(READER_KEY)).status_code == 403
        status = client.get("/providers", headers=bearer(OPS_KEY))
        assert status.status_code == 200
        assert set(status.json()["providers"]) == {"alpha", "beta"}
        assert set(client.get("/readyz").json()) == {"ready"}
        assert "providers" in client.get("/readyz", headers=bearer(OPS_KEY)).json()
        # Status rights are not token rights, and forced refresh follows the token rules.
        assert client.get("/token/alpha", headers=bearer(OPS_KEY)).status_code == 403
        assert client.post("/token/alpha/refresh", headers=bearer(OPS_KEY)).status_code == 403
        assert client.post("/token/alpha/refresh").status_code == 401
        assert client.post("/token/alpha/refresh", headers=bearer(READER_KEY)).status_code == 200


def test_every_token_handed_out_is_audited(caplog: pytest.LogCaptureFixture) -> None:
    """One broker.audit line per token: client and provider, never the token."""
    caplog.set_level(logging.INFO, logger="broker.audit")
    with broker() as (client, _):
        token = client.get("/token/alpha", headers=bearer(READER_KEY)).json()["access_token"]
        client.get("/token/beta", headers=bearer(OTHER_KEY))
    audit = [r for r in caplog.records if r.name == "broker.audit"]
    assert [(r.client, r.provider) for r in audit] == [("reader", "alpha"), ("other", "beta")]  # type: ignore[attr-defined]
    for record in audit:
        assert token not in record.getMessage()
        assert READER_KEY not in record.getMessage()


# -- requests that did not come from a local process ------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Origin": "https://evil.example"}, 403, "browser_request"),
        ({"Origin": "null"}, 403, "browser_request"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "browser_request"),
        ({"Sec-Fetch-Site": "same-site"}, 403, "browser_request"),
        ({"X-Forwarded-For": "203.0.113.9"}, 403, "proxied_request"),
        ({"Forwarded": "for=203.0.113.9"}, 403, "proxied_request"),
        ({"X-Real-IP": "203.0.113.9"}, 403, "proxied_request"),
        ({"Host": "evil.example"}, 403, "host_not_allowed"),
        ({"Host": "evil.example:8181"}, 403, "host_not_allowed"),
        ({"Host": "127.0.0.1.nip.io"}, 403, "host_not_allowed"),
    ],
)
def test_browsers_proxies_and_rebinding_are_refused(
    headers: dict[str, str], status: int, code: str
) -> None:
    """Even with a valid key: web pages, proxies and foreign Host names get nothing."""
    with broker() as (client, _):
        response = client.get("/token/alpha", headers={**bearer(READER_KEY), **headers})
        assert response.status_code == status
        assert response.json()["error"] == code
        assert "access_token" not in response.text
        # Status pages are protected the same way (a rebinding page must not read them).
        assert (
            client.get("/providers", headers={**bearer(OPS_KEY), **headers}).status_code == status
        )


PROXY_HEADERS = {
    "Via": "1.1 proxy.example",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Server": "proxy.example",
    "X-Client-IP": "203.0.113.9",
    "True-Client-IP": "203.0.113.9",
    "CF-Connecting-IP": "203.0.113.9",
    "X-Original-URL": "/token/beta",
    "X-Rewrite-URL": "/token/beta",
}
"""Headers proxies, CDNs and rewriting front ends add, beyond X-Forwarded-* and Forwarded."""


@pytest.mark.parametrize("name", list(PROXY_HEADERS))
def test_every_proxy_header_is_refused_on_both_paths(name: str) -> None:
    """In any spelling, with a valid key: 403 proxied_request from the fast path's request
    (a plain GET) and from the routes; without the header both are served."""
    spellings = {name, name.lower(), name.upper(), name.swapcase()}
    with broker_and_fast_path() as (client, fast):
        for spelling in spellings:
            for path in ("/token/alpha", "/token/alpha?format=json", "/providers"):
                key = OPS_KEY if path == "/providers" else READER_KEY
                headers = {**bearer(key), spelling: PROXY_HEADERS[name]}
                response = client.get(path, headers=headers)
                assert response.status_code == 403, (spelling, path, response.text)
                assert response.json()["error"] == "proxied_request"
        assert fast.served == 0
        assert client.get("/token/alpha", headers=bearer(READER_KEY)).status_code == 200
        assert fast.served == 1
        assert client.get("/token/alpha?format=json", headers=bearer(READER_KEY)).status_code == 200


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]:8181", "LOCALHOST:1"])
def test_loopback_host_names_are_accepted(host: str) -> None:
    """The names a local process uses pass the Host check; so does Sec-Fetch-Site: none."""
    with broker() as (client, _):
        headers = {**bearer(READER_KEY), "Host": host, "Sec-Fetch-Site": "none"}
        assert client.get("/token/alpha", headers=headers).status_code == 200


def test_cors_preflight_gets_no_cors_headers() -> None:
    """No Access-Control-* header on any answer: browsers may not read tokens cross-origin."""
    with broker() as (client, _):
        preflight = client.options(
            "/token/alpha",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code in (403, 405)
        normal = client.get("/token/alpha", headers=bearer(READER_KEY))
        for response in (preflight, normal):
            assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_required_header_when_configured() -> None:
    """With security.require_header, requests without it get 412 (as Vault's listener)."""
    extra = CLIENTS + "security:\n  require_header: {name: X-Broker-Request, value: 'true'}\n"
    with broker(extra) as (client, _):
        missing = client.get("/token/alpha", headers=bearer(READER_KEY))
        assert missing.status_code == 412
        assert missing.json()["error"] == "required_header_missing"
        wrong = client.get(
            "/token/alpha", headers={**bearer(READER_KEY), "X-Broker-Request": "yes"}
        )
        assert wrong.status_code == 412
        ok = client.get("/token/alpha", headers={**bearer(READER_KEY), "X-Broker-Request": "true"})
        assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200  # liveness stays open


@pytest.mark.parametrize(
    "path",
    [
        "/token/..%2Fproviders",
        "/token/%2e%2e",
        "/token/alpha%2F..%2Fbeta",
        "/token/alpha/../beta",
        "/token/" + "a" * 10_000,
        "/token/%C4%A7lpha",
        "/token/alph%00a",
        "/token/ALPHA",
        "/token/alpha%20",
    ],
)
def test_path_tricks_never_reach_another_provider(path: str) -> None:
    """Encoded slashes, dot segments, long, unicode and NUL names: no 500, no other token."""
    with broker() as (client, _):
        for headers in ({}, bearer(READER_KEY)):
            response = client.get(path, headers=headers)
            assert response.status_code in (401, 403, 404, 414), response.text
            assert "access_token" not in response.text


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/token/" + "a" * 10_000, "a" * 64 + "..."),
        ("/token/%1B%5B31mred%0D%0Ainjected", "red injected"),
        ("/token/%E2%80%AEreversed", "reversed"),
    ],
)
def test_unknown_provider_answers_echo_a_short_sanitized_name(path: str, shown: str) -> None:
    """A 10 KB name, escape sequences, line breaks and bidi overrides: the 404 names at
    most 64 printable characters of what was asked, on one line."""
    with broker() as (client, _):
        for suffix in ("", "?format=json"):
            response = client.get(path + suffix, headers=bearer(OTHER_KEY))
            assert response.status_code == 404
            body = response.json()
            assert body == {
                "error": "unknown_provider",
                "message": f"no provider named {shown!r} is configured",
            }
            assert len(response.content) < 200


def test_oversized_headers_are_refused_and_the_broker_survives() -> None:
    """A 100 KB header is refused by the server; the next request is served."""
    with broker() as (client, _):
        try:
            response = client.get("/token/alpha", headers={"X-Big": "x" * 100_000})
            assert response.status_code in (400, 413, 431)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            # The server may instead close the connection; while the client is still
            # sending the 100 KB, the client sees that as a reset (read or write error).
            pass
        assert client.get("/token/alpha", headers=bearer(READER_KEY)).status_code == 200


# -- without clients --------------------------------------------------------------------


@pytest.mark.anyio
async def test_without_clients_only_loopback_peers_are_served() -> None:
    """No clients configured: a caller from another address is refused before routing."""
    settings = settings_from(PROVIDERS.format(url="http://127.0.0.1:9"))
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as remote:
        response = await remote.get("/token/alpha")
    assert response.status_code == 403
    assert response.json()["error"] == "not_loopback"


def test_without_clients_loopback_needs_no_key(caplog: pytest.LogCaptureFixture) -> None:
    """The default: local processes call without a key, and the broker says so at start."""
    caplog.set_level(logging.INFO, logger="broker.security")
    with broker(extra="") as (client, _):
        assert client.get("/token/alpha").status_code == 200
        assert client.get("/providers").status_code == 200
    assert any("only processes on this host" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_network_bind_without_clients_refuses_to_start(host: str) -> None:
    """Binding beyond loopback without client keys is a config error, unless overridden."""
    base = f"host: '{host}'\n" + PROVIDERS.format(url="http://127.0.0.1:9")
    with pytest.raises(ConfigError) as caught:
        settings_from(base)
    assert "configure clients" in str(caught.value)
    overridden = settings_from("security: {allow_unauthenticated_network: true}\n" + base)
    assert overridden.security.allow_unauthenticated_network
    assert settings_from(CLIENTS + base).clients


def test_client_keys_are_validated() -> None:
    """Short keys, shared keys and unknown providers are config errors; keys never echoed."""
    base = PROVIDERS.format(url="http://127.0.0.1:9")
    cases = {
        "clients:\n  a: {key: short-key-1, providers: [alpha]}\n": "at least 16 characters",
        f"clients:\n  a: {{key: {READER_KEY}, providers: [alpha]}}\n"
        f"  b: {{key: {READER_KEY}, providers: [beta]}}\n": "the same key as client 'a'",
        f"clients:\n  a: {{key: {READER_KEY}, providers: [gamma]}}\n": "no provider named 'gamma'",
    }
    for extra, problem in cases.items():
        with pytest.raises(ConfigError) as caught:
            settings_from(extra + base)
        assert problem in str(caught.value)
        assert READER_KEY not in str(caught.value)
        assert "short-key-1" not in str(caught.value)


def test_inline_secrets_in_a_readable_config_are_warned_about(tmp_path: Path) -> None:
    """A world-readable file with inline secrets gets a warning per secret; 0600 does not."""
    config = tmp_path / "config.yaml"
    config.write_text(
        CLIENTS
        + PROVIDERS.format(url="http://127.0.0.1:9").replace(
            "client_secret: app-secret", "client_secret: {env: SOME_SECRET}", 1
        )
    )
    os.chmod(config, 0o644)
    warnings = inline_secret_warnings(config)
    assert len(warnings) == 4  # three client keys and beta's client_secret
    assert all("readable by other users" in w for w in warnings)
    assert not any(READER_KEY in w or "app-secret" in w for w in warnings)
    os.chmod(config, 0o600)
    assert inline_secret_warnings(config) == []
