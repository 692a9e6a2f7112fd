"""Shared fixtures. Async tests run on asyncio (what uvicorn and FastAPI use); a real
redis-server for the tests of the shared store starts when one first asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redisserver import RedisServer, run_redis_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server per test process (each xdist worker has its own); tests keep
    apart by taking a place of their own on it (``redis_server.place()``)."""
    with run_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server
