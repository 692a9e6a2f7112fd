"""Shared fixtures. Async tests run on asyncio (what uvicorn and FastAPI use)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
