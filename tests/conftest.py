"""Shared fixtures. Async tests run on asyncio (what uvicorn and FastAPI use); a real
redis-server for the tests of the shared store starts when one first asks for it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.browser import launch_browser, new_local_page
from tests.redisserver import RedisServer, run_redis_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server per test process (each xdist worker has its own); tests keep
    apart by taking a place of their own on it (``redis_server.place()``)."""
    with run_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for a browser test module (see tests/browser.py)."""
    yield from launch_browser()


@pytest.fixture
def local_page(browser: Browser) -> Iterator[Page]:
    """A fresh page that may reach 127.0.0.1 only (see tests/browser.py)."""
    yield from new_local_page(browser)
