"""The fakes' login pages in a real browser: headless Chromium (Debian's) driven by Playwright.

A person fills ``#username`` and ``#password`` and clicks ``#allow``, ``#deny`` or
``#approve``; the pages load nothing (every request must go to 127.0.0.1, and the host
resolver knows no other name) and break no rule of their Content-Security-Policy. Skipped
without ``/usr/bin/chromium``, except in CI, where that fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from starlette.types import Receive, Scope, Send

from broker.fakes.hiro import DEMO_CLIENT_ID as HIRO_CLIENT
from broker.fakes.hiro import FakeHiro
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.browser import require_chromium
from tests.fakes.helpers import new_client
from tests.fakes.login import fragment_of, pkce, query_of

require_chromium()

from playwright.sync_api import Page  # noqa: E402

pytestmark = pytest.mark.smoke

USERS = {"alice": "alice-pw"}
CLIENTS = {"app": "app-secret"}


async def callback(scope: Scope, receive: Receive, send: Send) -> None:
    """The client's redirect URI: a page that says the login came back."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/html; charset=utf-8")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"<!DOCTYPE html><p>back</p>"})


@pytest.fixture(scope="module")
def callback_url() -> Iterator[str]:
    with serve_in_thread(callback) as url:
        yield url + "/callback"


@pytest.fixture
def page(local_page: Page) -> Page:
    """A page that may reach 127.0.0.1 only, recording every policy violation."""
    local_page.add_init_script(
        "window.violations = [];"
        " document.addEventListener('securitypolicyviolation',"
        " e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    return local_page


def authorize_url(base: str, callback_url: str, challenge: str) -> str:
    query = {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": callback_url,
        "state": "browser",
        "scope": "openid",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return f"{base}/authorize?{urlencode(query)}"


def test_a_person_signs_in_and_the_code_is_redeemed(page: Page, callback_url: str) -> None:
    fake = FakeOAuth2(clients=CLIENTS, users=USERS)
    verifier, challenge = pkce()
    with serve_in_thread(fake.app) as base:
        page.goto(authorize_url(base, callback_url, challenge))
        assert page.title() == "Sign in to Fake OAuth2"
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill("alice-pw")
        page.click("#allow")
        page.wait_for_url(callback_url + "?*")
        assert page.evaluate("window.violations") == []
        answer = query_of(page.url)
        assert answer["state"] == "browser"
        form = {"grant_type": "authorization_code", "code": answer["code"]}
        form |= {"redirect_uri": callback_url, "code_verifier": verifier}
        with new_client(base) as client:
            tokens = client.post("/oauth/token", data=form, auth=("app", "app-secret"))
        assert tokens.status_code == 200
        assert "id_token" in tokens.json()


def test_enter_allows_and_deny_denies(page: Page, callback_url: str) -> None:
    fake = FakeOAuth2(clients=CLIENTS, users=USERS)
    _, challenge = pkce()
    with serve_in_thread(fake.app) as base:
        page.goto(authorize_url(base, callback_url, challenge))
        page.fill("#username", "alice")
        page.fill("#password", "wrong")
        page.press("#password", "Enter")
        page.wait_for_selector("#error")
        assert page.inner_text("#error") == "Wrong username or password"
        assert page.input_value("#username") == "alice"
        page.click("#deny")
        page.wait_for_url(callback_url + "?*")
        assert query_of(page.url)["error"] == "access_denied"
        assert fake.issued_codes == []


def test_a_person_approves_a_device(page: Page) -> None:
    fake = FakeOAuth2(clients=CLIENTS, users=USERS)
    with serve_in_thread(fake.app) as base, new_client(base) as client:
        start = client.post("/device_authorization", auth=("app", "app-secret")).json()
        page.goto(start["verification_uri_complete"])
        assert page.input_value("#user_code") == start["user_code"]
        page.fill("#username", "alice")
        page.fill("#password", "alice-pw")
        page.click("#approve")
        page.wait_for_selector("text=Device connected")
        assert page.evaluate("window.violations") == []
        poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code"}
        poll["device_code"] = start["device_code"]
        tokens = client.post("/oauth/token", data=poll, auth=("app", "app-secret"))
        assert tokens.status_code == 200


def test_hiro_ui_flow_lands_with_the_token_in_the_fragment(page: Page, callback_url: str) -> None:
    fake = FakeHiro()
    with serve_in_thread(fake.app) as base:
        query = urlencode({"client_id": HIRO_CLIENT, "redirect_url": callback_url})
        page.goto(f"{base}/api/auth/6/ui/?{query}")
        page.fill("#username", "demo@example.com")
        page.fill("#password", "demo-password")
        page.click("#allow")
        page.wait_for_url(callback_url + "#*")
        assert fragment_of(page.url) == {"accessoken": fake.issued_access_tokens[0]}
