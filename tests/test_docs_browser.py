"""The docs page in a real browser: headless Chromium (Debian's) driven by Playwright.

It renders from the broker alone (every request the page makes goes to the broker; any
other would be aborted before it left, and the host resolver knows no name but
127.0.0.1), and a script injected into it cannot run, so it cannot read a token, which a
script that does run there can. ``scripts/test`` installs Debian's ``chromium`` when it is
missing; without it this module is skipped, except in CI, where it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.browser import TIMEOUT_MS, require_chromium
from tests.support import running_broker, settings_from, wait_for

require_chromium()

from playwright.sync_api import Browser, Page, Route  # noqa: E402

pytestmark = pytest.mark.smoke  # real processes, sockets or programs: see pyproject's markers

CONFIG = """
docs: true
providers:
  alpha:
    type: oauth2
    token_url: "{url}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret
"""


@dataclass
class Traffic:
    """Every request the page made, and those aborted for leaving the broker."""

    broker: str
    requested: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)

    def route(self, route: Route) -> None:
        url = route.request.url
        self.requested.append(url)
        if url.startswith("http://127.0.0.1:"):
            route.continue_()  # other local ports too: CSP, not this filter, must stop them
        else:
            self.aborted.append(url)
            route.abort()

    def to_broker(self, path: str) -> list[str]:
        return [url for url in self.requested if url.startswith(self.broker + path)]


@contextmanager
def docs_page(browser: Browser) -> Iterator[tuple[Page, Traffic, httpx.Client]]:
    """The broker (no clients: every local caller may read tokens and docs) and its docs
    page, loaded in a fresh browser context, with its traffic recorded."""
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=300)
    with (
        serve_in_thread(fake.app) as url,
        running_broker(settings_from(CONFIG.format(url=url))) as client,
    ):
        wait_for(lambda: client.get("/readyz").status_code == 200)
        traffic = Traffic(str(client.base_url))
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.route("**/*", traffic.route)
            page.add_init_script(
                "window.violations = [];"
                " document.addEventListener('securitypolicyviolation',"
                " e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));"
            )
            page.goto(traffic.broker + "/docs")
            page.wait_for_selector(".opblock")  # the operations, rendered from /openapi.json
            yield page, traffic, client
        finally:
            context.close()


def test_the_docs_page_renders_from_the_broker_alone(browser: Browser) -> None:
    """Swagger UI shows the API from the broker's own files and OpenAPI document; no
    request goes anywhere else and the policy blocks nothing the page needs."""
    with docs_page(browser) as (page, traffic, _):
        assert "credential broker" in page.inner_text(".info .title")
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert "/token/{provider}" in [p.replace("\u200b", "") for p in paths]
        assert traffic.aborted == []
        assert traffic.requested
        assert all(url.startswith(traffic.broker + "/") for url in traffic.requested)
        assert traffic.to_broker("/docs/static/swagger-ui-bundle.js")
        assert traffic.to_broker("/openapi.json")
        assert page.evaluate("window.violations") == []


class Cdn:
    """A script host on another local port, as a CDN would be: counts what it serves."""

    SCRIPT = b"window.stolen = 'cdn'; fetch('/token/alpha').then(r => r.text())"

    def __init__(self) -> None:
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.served += 1
        headers = [(b"content-type", b"text/javascript")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.SCRIPT})


INJECT = """
([cdn]) => {
    const inline = document.createElement('script');
    inline.textContent = "window.stolen = 'inline';"
        + " fetch('/token/alpha').then(r => r.json()).then(b => window.stolen = b.access_token)";
    document.body.appendChild(inline);
    document.body.insertAdjacentHTML('beforeend',
        '<img src="/docs/static/favicon-32x32.png" onload="window.stolen = \\'handler\\'">');
    const foreign = document.createElement('script');
    foreign.src = cdn + '/steal.js';
    document.body.appendChild(foreign);
    return window.stolen === undefined;
}
"""


def test_a_script_injected_into_the_docs_page_cannot_read_a_token(browser: Browser) -> None:
    """A script that runs on the broker's origin reads a token (the danger is real); an
    inline script, an inline event handler and a script from another origin injected
    into the docs page are blocked by its Content-Security-Policy, so none reads one."""
    cdn = Cdn()
    with serve_in_thread(cdn) as cdn_url, docs_page(browser) as (page, traffic, client):
        # The test's own code is not subject to the page's policy, as no injected script is.
        token = page.evaluate("fetch('/token/alpha').then(r => r.json())")["access_token"]
        assert token == client.get("/token/alpha").json()["access_token"]
        requested_tokens = len(traffic.to_broker("/token/"))
        assert page.evaluate(INJECT, [cdn_url]) is True
        page.wait_for_function("window.violations.length >= 3")
        violations = page.evaluate("window.violations")
        assert any(v.startswith("script-src-elem inline") for v in violations), violations
        assert any(v.startswith("script-src-attr inline") for v in violations), violations
        assert f"script-src-elem {cdn_url}/steal.js" in violations, violations
        assert page.evaluate("window.stolen") is None
        assert len(traffic.to_broker("/token/")) == requested_tokens
        assert cdn.served == 0
        assert traffic.aborted == []
