"""The docs, the OpenAPI document and the security headers, through real HTTP.

A script running on the broker's origin can read tokens like any local caller, so: docs
off by default and self-hosted when on, OpenAPI and docs only for callers allowed status,
and on every answer a Content-Security-Policy that lets nothing from elsewhere run,
``nosniff`` and no framing. The browser's view is in ``tests/test_docs_browser.py``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from importlib.metadata import version

import httpx
import pytest

from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from broker.web.docs import ASSET_DIRECTORY
from broker.web.fastpath import TokenFastPath
from tests.support import serving, settings_from, wait_for

READER_KEY = "reader-key-7f3a9c2e41d0"
ALL_KEY = "all-key-0b8e5d6f2a91c4"
OPS_KEY = "ops-key-5c4b3a2918e7f6"

CLIENTS = f"""
clients:
  reader: {{key: {READER_KEY}, providers: [alpha]}}
  all: {{key: {ALL_KEY}, providers: ["*"]}}
  ops: {{key: {OPS_KEY}, status: true}}
"""

PROVIDERS = """
providers:
  alpha:
    type: oauth2
    token_url: "{url}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret
  down:
    type: oauth2
    token_url: "http://127.0.0.1:9/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret
"""

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}

DOCS_URLS = [
    "/docs",
    "/docs/static/swagger-ui-bundle.js",
    "/docs/static/swagger-ui.css",
    "/docs/static/favicon-32x32.png",
]


@contextmanager
def broker(extra: str = "") -> Iterator[tuple[httpx.Client, TokenFastPath]]:
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=300)
    with (
        serve_in_thread(fake.app) as url,
        serving(settings_from(extra + PROVIDERS.format(url=url))) as (client, fast),
    ):
        wait_for(lambda: client.get("/token/alpha", headers=bearer(READER_KEY)).status_code == 200)
        yield client, fast


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def not_found_body(client: httpx.Client) -> bytes:
    return client.get("/no-such-route").content


# -- docs off by default, OpenAPI and docs for status callers ----------------------------


def test_docs_are_off_by_default() -> None:
    """Without docs: true, /docs, its assets, /redoc and Swagger's OAuth2 page answer as
    routes that do not exist, to any caller."""
    with broker(CLIENTS) as (client, _):
        for path in [*DOCS_URLS, "/redoc", "/docs/oauth2-redirect"]:
            for headers in ({}, bearer(OPS_KEY)):
                response = client.get(path, headers=headers)
                assert response.status_code == 404, path
                assert response.content == not_found_body(client)
                assert response.json()["error"] == "not_found"


@pytest.mark.parametrize("docs", [False, True])
def test_openapi_and_docs_are_for_callers_allowed_status(docs: bool) -> None:
    """Clients configured: no key 401, a token client 403, a status client 200."""
    with broker(CLIENTS + f"docs: {str(docs).lower()}\n") as (client, _):
        for path in ["/openapi.json", *(DOCS_URLS if docs else [])]:
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=bearer(READER_KEY)).status_code == 403, path
            assert client.get(path, headers=bearer(OPS_KEY)).status_code == 200, path
        spec = client.get("/openapi.json", headers=bearer(OPS_KEY)).json()
        assert "/token/{provider}" in spec["paths"]


def test_without_clients_every_local_caller_may_read_docs_and_openapi() -> None:
    """As /providers: without clients, loopback callers need no key."""
    with broker("docs: true\n") as (client, _):
        for path in ["/openapi.json", *DOCS_URLS]:
            assert client.get(path).status_code == 200, path


# -- the docs page loads nothing from elsewhere ---------------------------------------------


class References(HTMLParser):
    """Every URL an HTML page makes a browser fetch or follow, and its inline scripts."""

    URL_ATTRIBUTES = frozenset({"src", "href", "action", "formaction", "data", "poster"})

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in self.URL_ATTRIBUTES and v is not None]
        self.urls += [u for k, v in attrs if k == "srcset" and v for u in v.split()[::2]]
        self._in_inline_script = tag == "script" and not dict(attrs).get("src")
        if self._in_inline_script:
            self.inline_scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script:
            self.inline_scripts[-1] += data


def sha256_source(script: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"


def test_the_docs_page_references_only_its_own_origin() -> None:
    """Every src and href is a path on the broker, served, and byte for byte the pinned
    package's file; the page's CSP allows exactly its own inline script by hash."""
    with broker("docs: true\n") as (client, _):
        page = client.get("/docs")
        assert page.status_code == 200
        references = References()
        references.feed(page.text)
        assert references.urls, "the page loads its script, style and icon"
        for url in references.urls:
            assert url.startswith("/"), url
            assert not url.startswith("//"), url
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert asset.content == (ASSET_DIRECTORY / url.rsplit("/", 1)[1]).read_bytes()
        # The files are those of the installed package (its directory names the version).
        assert ASSET_DIRECTORY.name == f"swagger-ui-{version('swagger-ui-bundle-v2')}"
        assert not re.search(r"(?i)\b(https?:)?//", page.text.replace("</", "")), page.text
        policy = page.headers["content-security-policy"]
        assert policy == (
            "default-src 'self'; script-src 'self' "
            + " ".join(sha256_source(s) for s in references.inline_scripts)
            + "; img-src 'self' data:; frame-ancestors 'none'"
        )
        assert len(references.inline_scripts) == 1
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"


def test_only_the_files_the_page_loads_are_served() -> None:
    """The distribution's demo index.html, its initializer (pointing at a public demo API)
    and source maps are not served, nor anything outside the directory."""
    with broker("docs: true\n") as (client, _):
        for name in [
            "index.html",
            "swagger-initializer.js",
            "oauth2-redirect.html",
            "swagger-ui-bundle.js.map",
            "..%2F__init__.py",
            "%2e%2e%2f%2e%2e%2fREADME.md",
        ]:
            response = client.get(f"/docs/static/{name}")
            assert response.status_code == 404, name


# -- the security headers on every answer ---------------------------------------------------


def answers(client: httpx.Client, fast: TokenFastPath) -> Iterator[tuple[str, httpx.Response]]:
    """One answer of every kind the broker gives, with what it is."""
    reader, everything, ops = bearer(READER_KEY), bearer(ALL_KEY), bearer(OPS_KEY)
    before = fast.served
    yield "token, fast path", client.get("/token/alpha", headers=reader)
    assert fast.served == before + 1
    yield "token, route", client.get("/token/alpha?format=json", headers=reader)
    yield "raw token", client.get("/token/alpha?format=raw", headers=reader)
    yield "forced refresh", client.post("/token/alpha/refresh", headers=reader)
    yield "healthz", client.get("/healthz")
    yield "readyz", client.get("/readyz")
    yield "providers", client.get("/providers", headers=ops)
    yield "metrics", client.get("/metrics", headers=ops)
    yield "openapi", client.get("/openapi.json", headers=ops)
    yield "401", client.get("/token/alpha")
    yield "403 forbidden", client.get("/token/down", headers=reader)
    yield (
        "403 browser",
        client.get("/token/alpha", headers={**reader, "Origin": "https://x.example"}),
    )
    yield "403 host", client.get("/providers", headers={**ops, "Host": "evil.example"})
    yield "404 route", client.get("/no-such-route")
    yield "404 docs off", client.get("/docs", headers=ops)
    yield "404 provider", client.get("/token/nope", headers=everything)
    yield "405", client.put("/token/alpha", headers=reader)
    yield "422", client.get("/token/alpha?min_valid=-1", headers=reader)
    yield "431", client.get("/providers", headers={**ops, "X-Pad": "x" * 17_000})
    yield "503", client.get("/token/down", headers=everything)
    yield "500", client.get("/boom")


def test_every_answer_carries_the_security_headers() -> None:
    """Routes, the fast path, error handlers, the guard's denials, 404s, 405, 422, 431,
    503 and a 500 from Starlette's own error middleware: all three headers, exactly."""
    with broker(CLIENTS) as (client, fast):

        async def boom() -> None:
            raise RuntimeError("a bug")

        fast.app.add_api_route("/boom", boom)
        statuses = {}
        for kind, response in answers(client, fast):
            statuses[kind] = response.status_code
            for name, value in SECURITY_HEADERS.items():
                assert response.headers.get(name) == value, (kind, response.headers)
        expected = {"401": 401, "405": 405, "422": 422, "431": 431, "503": 503, "500": 500}
        expected |= {"readyz": 503}  # provider down is not ready
        expected |= {"403 forbidden": 403, "403 browser": 403, "403 host": 403}
        expected |= {"404 route": 404, "404 docs off": 404, "404 provider": 404}
        assert {kind: statuses[kind] for kind in expected} == expected
        assert all(statuses[kind] == 200 for kind in statuses if kind not in expected)
