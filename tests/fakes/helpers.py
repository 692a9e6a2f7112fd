"""Helpers shared by the fake-IdP tests (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

Connect = Callable[[ASGIApp], httpx.Client]
"""The ``connect`` fixture: plug a fake's app into the shared server, get a client for it."""


# httpx builds (and loads CA certificates into) a new SSL context for every Client, ~30 ms
# each; the fakes are plain HTTP, so all test clients share one context.
_SSL_CONTEXT = ssl.create_default_context()


def new_client(base_url: str) -> httpx.Client:
    """An ``httpx.Client`` for a fake at ``base_url``."""
    return httpx.Client(base_url=base_url, timeout=5, verify=_SSL_CONTEXT)


class Clock:
    """A clock a test moves by hand; pass it as a fake's ``now``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Switchboard:
    """An ASGI app that forwards every request to ``self.target``."""

    def __init__(self) -> None:
        self.target: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.target is None:
            raise RuntimeError("no fake plugged into the switchboard")
        await self.target(scope, receive, send)


def basic(user: str, password: str) -> str:
    """An ``Authorization: Basic`` value without any form-encoding."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
