"""Headless Chromium for the browser tests (Debian's ``chromium``, driven by Playwright with
``executable_path``: Playwright's own browser download cannot work here).

A browser test module calls :func:`require_chromium` at its top: it skips the module when
Chromium is missing (``scripts/test`` installs it), except in CI, where that fails. The
fixtures (tests/conftest.py) are ``browser`` (one per module) and ``local_page`` (a fresh
context whose requests may go to 127.0.0.1 only; any other is aborted and fails the test).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    # No name resolves but the loopback address: nothing can leave this machine.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
TIMEOUT_MS = 15_000


def require_chromium() -> None:
    """Skip the calling module without Chromium (fail in CI, which must have it)."""
    if not shutil.which(CHROMIUM):
        reason = f"{CHROMIUM} is missing (apt-get install chromium; scripts/test does)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def launch_browser() -> Iterator[Browser]:
    """Chromium for one module's tests (the ``browser`` fixture)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True, timeout=TIMEOUT_MS
        )
        try:
            yield chromium
        finally:
            chromium.close()


def new_local_page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context that may reach 127.0.0.1 only (``local_page``)."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    leaving: list[str] = []

    def only_local(route: Route) -> None:
        if route.request.url.startswith("http://127.0.0.1:"):
            route.continue_()
        else:
            leaving.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    try:
        yield page
        assert leaving == [], f"requests that would have left this machine: {leaving}"
    finally:
        context.close()
