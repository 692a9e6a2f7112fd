"""``broker login`` with a real browser: headless Chromium (Debian's, driven by Playwright)
opens the link the CLI printed, the person signs in at the fake OAuth2 server's form, the
identity provider sends the browser back to the broker's callback, and the CLI, which waited,
reports the provider ready. A broker process and the CLI process on real sockets.

``scripts/test`` installs Debian's ``chromium`` when it is missing; without it this module is
skipped, except in CI, where it fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from broker.fakes import FakeHiro, FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.browser import require_chromium
from tests.support import BROKER, ROOT, free_port, process, ready, wait_for
from tests.test_login import KEY

require_chromium()

from playwright.sync_api import Page  # noqa: E402

pytestmark = pytest.mark.smoke  # real processes and a real browser

CONFIG = """
port: {port}
clients:
  operator:
    key: "{key}"
    providers: [corp]
    login: true
providers:
  corp:
    type: oauth2
    grant: authorization_code
    issuer: "{idp}"
    token_url: "{idp}/oauth/token"
    client_id: app
    client_secret: {{env: CORP_SECRET}}
    scope: openid offline_access
"""


def test_broker_login_in_a_real_browser(local_page: Page, tmp_path: Path) -> None:
    page = local_page
    fake = FakeOAuth2(clients={"app": "app-secret"}, users={"alice": "alice-pw"}, ttl=300.0)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serve_in_thread(fake.app) as idp:
        config = tmp_path / "config.yaml"
        config.write_text(CONFIG.format(port=port, key=KEY, idp=idp))
        config.chmod(0o600)
        with process("serve", "--config", str(config), env={"CORP_SECRET": "app-secret"}) as broker:
            wait_for(lambda: "serving" in broker.output, timeout=30)
            login = subprocess.Popen(
                [*BROKER, "login", "corp", "--url", base, "--timeout", "60"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                # No browser to open here (BROWSER names none): the test's Chromium is it.
                env={**os.environ, "BROKER_KEY": KEY, "BROWSER": "true"},
            )
            assert login.stdout is not None
            try:
                link = [login.stdout.readline() for _ in range(2)][1].strip()
                page.goto(link)
                assert page.title() == "Sign in to Fake OAuth2"
                page.get_by_label("Username").fill("alice")
                page.get_by_label("Password").fill("alice-pw")
                page.click("#allow")
                page.wait_for_url(f"{base}/login/callback?*")
                shown = page.inner_text("body")
                cookies = page.context.cookies()
                out, err = login.communicate(timeout=30)
            finally:
                if login.poll() is None:
                    login.kill()
                    login.communicate()
            wait_for(lambda: ready(base, broker.proc), timeout=10)
            token = httpx.get(f"{base}/token/corp", headers={"Authorization": f"Bearer {KEY}"})
    assert login.returncode == 0, err
    assert "logged in; provider 'corp' is ready" in out
    assert "Logged in" in shown
    assert token.status_code == 200
    assert token.json()["access_token"] not in shown
    assert fake.is_access_token_valid(token.json()["access_token"])
    assert not [c for c in cookies if c["name"].startswith("broker-login-")]  # dropped at the end
    (authorize, *_) = fake.authorize_requests()
    assert authorize.query["code_challenge_method"] == "S256"
    assert authorize.query["nonce"]


UI_CONFIG = """
port: {port}
clients:
  operator:
    key: "{key}"
    providers: [hiro]
    login: true
providers:
  hiro:
    type: hiro
    url: "{idp}"
    auth_api: /api/auth/6.6
    flow: ui
    client_id: app
    client_secret: {{env: HIRO_SECRET}}
"""


def test_hiro_ui_flow_in_a_real_browser(local_page: Page, tmp_path: Path) -> None:
    """The page's own script takes the token out of the fragment and hands it over; the
    strict policy lets nothing else run; the address bar keeps no token."""
    page = local_page
    fake = FakeHiro(users={"alice": "alice-pw"}, clients={"app": "app-secret"}, auth_version="6.6")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    page.add_init_script(
        "window.violations = [];"
        " document.addEventListener('securitypolicyviolation',"
        " e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    with serve_in_thread(fake.app) as idp:
        config = tmp_path / "config.yaml"
        config.write_text(UI_CONFIG.format(port=port, key=KEY, idp=idp))
        config.chmod(0o600)
        with process("serve", "--config", str(config), env={"HIRO_SECRET": "app-secret"}) as broker:
            wait_for(lambda: "serving" in broker.output, timeout=30)
            started = httpx.post(
                f"{base}/login/hiro", headers={"Authorization": f"Bearer {KEY}"}
            ).json()
            page.goto(started["url"])
            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password").fill("alice-pw")
            page.click("#allow")
            page.wait_for_url(f"{base}/login/callback*")
            # A locator, not wait_for_function: that evaluates a string in the page, which
            # its policy (no 'unsafe-eval') rightly refuses.
            page.locator("#title", has_text="Logged in").wait_for()
            shown = page.inner_text("body")
            address = page.url
            violations = page.evaluate("window.violations")
            outcome = httpx.get(
                f"{base}/login/attempts/{started['login']}",
                headers={"Authorization": f"Bearer {KEY}"},
            ).json()
            token = httpx.get(f"{base}/token/hiro", headers={"Authorization": f"Bearer {KEY}"})
    assert outcome["outcome"] == "ready"
    assert "no refresh token" in shown
    assert token.status_code == 200
    assert token.json()["access_token"] not in shown
    assert "#" not in address  # the fragment is gone from the address bar and history
    assert violations == []
