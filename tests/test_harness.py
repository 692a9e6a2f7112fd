"""The test helpers' own promises: settle() waits exactly until the loop is idle; the
in-process harness (tests/inprocess.py) behaves like the network and the server it replaces."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from broker.fakes.oauth2 import FakeOAuth2
from tests.inprocess import IdPs, in_process, lifespan
from tests.support import FakeClock, settings_from, settle

pytestmark = pytest.mark.anyio


async def test_settle_runs_a_chain_of_handoffs_longer_than_any_fixed_round_count() -> None:
    """1,000 tasks each waking the next: all done when settle() returns, none left over."""
    events = [asyncio.Event() for _ in range(1001)]

    async def relay(index: int) -> None:
        await events[index].wait()
        events[index + 1].set()

    tasks = [asyncio.ensure_future(relay(i)) for i in range(1000)]
    await asyncio.sleep(0)  # every relay now waits: each hand-off takes a loop iteration
    events[0].set()
    await settle()
    assert events[-1].is_set()
    assert all(task.done() for task in tasks)


async def test_settle_returns_while_tasks_wait_on_the_fake_clock() -> None:
    """A sleeper on the fake clock is waiting, not busy: settle() returns; advance wakes it."""
    clock = FakeClock()
    sleeper = asyncio.ensure_future(clock.sleep(5))
    await settle()
    assert not sleeper.done()
    await clock.advance(5)
    assert sleeper.done()


async def test_settle_fails_loudly_when_the_loop_never_goes_idle() -> None:
    """A task that spins on sleep(0) forever is a bug in the test or the broker: say so."""

    async def spin() -> None:
        while True:  # noqa: ASYNC110  # busy on purpose: the bug settle() must report
            await asyncio.sleep(0)

    spinner = asyncio.ensure_future(spin())
    try:
        with pytest.raises(AssertionError, match="did not go idle within 50 iterations"):
            await settle(limit=50)
    finally:
        spinner.cancel()


# -- the identity providers' transport ---------------------------------------------------------

IDP = "http://127.0.0.1:9001"


def hello(clock: FakeClock, delay: float = 0.0) -> Starlette:
    async def answer(request: Request) -> Response:
        if delay:
            await clock.sleep(delay)  # a FakeClock sleep waits for advance(), even sleep(0)
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/hello", answer)])


def get(url: str, read_timeout: float | None = None) -> httpx.Request:
    request = httpx.Request("GET", url)
    if read_timeout is not None:
        request.extensions["timeout"] = httpx.Timeout(read_timeout).as_dict()
    return request


async def test_idps_route_by_origin_and_refuse_an_origin_that_is_down() -> None:
    clock = FakeClock()
    idps = IdPs(clock)
    idps.serve(IDP, hello(clock))
    async with httpx.AsyncClient(transport=idps) as client:
        assert (await client.get(f"{IDP}/hello")).text == "hello"
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:9002/hello")  # another port: nothing there
        idps.stop(IDP)
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{IDP}/hello")
        await clock.advance(2)
        idps.serve(IDP, hello(clock))
        assert (await client.get(f"{IDP}/hello")).status_code == 200
    assert [(s.path, s.at, s.delivered) for s in idps.sent] == [
        ("/hello", 1000.0, True),
        ("/hello", 1000.0, False),
        ("/hello", 1000.0, False),
        ("/hello", 1002.0, True),
    ]
    assert idps.times(IDP, "/hello") == [1000.0, 1002.0]


async def test_idps_time_out_on_the_fake_clock_and_stop_the_slow_handler() -> None:
    """A 10 s answer with a 0.5 s read timeout: ReadTimeout at 0.5 s of fake time, not before."""
    clock = FakeClock()
    idps = IdPs(clock)
    idps.serve(IDP, hello(clock, delay=10))
    call = asyncio.ensure_future(idps.handle_async_request(get(f"{IDP}/hello", 0.5)))
    await clock.advance(0.499)
    assert not call.done()
    await clock.advance(0.001)
    with pytest.raises(httpx.ReadTimeout):
        await call
    await clock.advance(20)
    assert [s.delivered for s in idps.sent] == [True]


async def test_idps_answer_within_the_timeout_on_the_fake_clock() -> None:
    clock = FakeClock()
    idps = IdPs(clock)
    idps.serve(IDP, hello(clock, delay=0.4))
    call = asyncio.ensure_future(idps.handle_async_request(get(f"{IDP}/hello", 0.5)))
    await clock.advance(0.4)
    response = await call
    assert (response.status_code, await response.aread()) == (200, b"hello")


async def test_idps_report_a_body_shorter_than_its_content_length_as_a_cut_connection() -> None:
    async def cut(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"400")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"half"})

    idps = IdPs(FakeClock())
    idps.serve(IDP, cut)
    with pytest.raises(httpx.RemoteProtocolError):
        await idps.handle_async_request(get(f"{IDP}/"))


# -- the broker in-process ------------------------------------------------------------------

CONFIG = f"""
providers:
  idp:
    type: oauth2
    token_url: "{IDP}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret
"""


async def test_the_broker_runs_its_lifespan_and_refreshes_on_the_fake_clock() -> None:
    """Started by the lifespan, the broker logs in at once; its tokens follow the fake clock,
    refreshed before they expire; shutdown stops the engine."""
    clock = FakeClock()
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=60, now=clock.wall)
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    async with in_process(settings_from(CONFIG), idps) as broker:
        assert broker.app.runtime.manager is not None
        first = (await broker.get("/token/idp")).json()["access_token"]
        assert fake.issued_access_tokens == [first]
        assert broker.app.served == 1  # the fast path answered, as on the wire
        await clock.advance(61)
        assert not fake.is_access_token_valid(first)  # the fake's own clock moved
        second = (await broker.get("/token/idp")).json()["access_token"]
        assert second != first
        assert fake.is_access_token_valid(second)
        assert idps.times(IDP, "/oauth/token")[0] == 1000.0
        assert len(fake.token_requests()) == 2
    assert broker.app.runtime.manager is None


async def test_a_failed_startup_raises() -> None:
    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "no config"})

    with pytest.raises(RuntimeError, match="no config"):
        async with lifespan(refuse, FakeClock()):
            pytest.fail("started")
