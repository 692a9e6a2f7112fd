"""One token request on the wire (broker.engine.exchange)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import httpx
import pytest

from broker.core.clock import SystemClock
from broker.engine.exchange import exchange
from broker.protocols.oauth2 import OAuth2Protocol

pytestmark = pytest.mark.anyio

PROTOCOL = OAuth2Protocol(token_url="https://idp.test/token", grant="client_credentials")


@pytest.fixture
def no_cyclic_collector() -> Iterator[None]:
    """Only reference counting frees objects meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()


@pytest.mark.usefixtures("no_cyclic_collector")
async def test_the_answer_is_freed_by_reference_counting_once_read() -> None:
    """httpx links a response and its stream both ways; left so, every token request
    leaves ~40 objects only the cyclic collector frees, and a refresh burst's worth of
    them is freed in one pause of the event loop (bench/refresh_noise.py)."""
    answers: list[weakref.ref[httpx.Response]] = []

    async def keep(response: httpx.Response) -> None:
        answers.append(weakref.ref(response))

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "t", "expires_in": 300})

    transport = httpx.MockTransport(answer)
    async with httpx.AsyncClient(transport=transport, event_hooks={"response": [keep]}) as client:
        got = await exchange(
            client,
            PROTOCOL,
            PROTOCOL.login_request(),
            refreshing=False,
            timeout=5.0,
            default_expires_in=60.0,
            clock=SystemClock(),
        )
        assert got.grant.access_token == "t"
        assert got.lifetime == 300
        assert len(answers) == 1
        assert answers[0]() is None
