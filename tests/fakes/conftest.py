"""Fixtures for the fake-IdP tests: one real uvicorn server per session, a settable clock.

Starting uvicorn per test would cost ~0.1 s each; instead one server on 127.0.0.1 serves a
small switchboard app that forwards to whichever fake the current test plugged in. Requests
still travel over real HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.types import ASGIApp

from broker.fakes.server import serve_in_thread
from tests.fakes.helpers import Clock, Connect, Switchboard, new_client


@pytest.fixture(scope="session")
def switchboard() -> Iterator[tuple[Switchboard, str]]:
    board = Switchboard()
    with serve_in_thread(board) as base_url:
        yield board, base_url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def connect(switchboard: tuple[Switchboard, str]) -> Iterator[Connect]:
    """Plug a fake's app into the shared server and return an ``httpx.Client`` for it."""
    board, base_url = switchboard
    clients: list[httpx.Client] = []

    def _connect(app: ASGIApp) -> httpx.Client:
        board.target = app
        client = new_client(base_url)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()
    board.target = None
