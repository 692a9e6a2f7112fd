"""serve_in_thread, FakeServer, serve() and the ``python -m broker.fakes`` command."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from broker.fakes import FakeHub, FakeServer, serve, serve_in_thread
from broker.fakes.hub import DEMO_SERVICE_ID
from tests.fakes.helpers import new_client


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


APP = Starlette(routes=[Route("/", hello)])
_FAILING = {"startup": True}


@contextlib.asynccontextmanager
async def _broken_lifespan(app: Starlette) -> AsyncIterator[None]:
    """A lifespan whose startup fails (the dict keeps mypy from calling the yield unreachable)."""
    if _FAILING["startup"]:
        raise RuntimeError("boom")
    yield


def test_serve_in_thread_binds_a_free_port_and_stops() -> None:
    """A real socket on 127.0.0.1:<free port>; nothing listens there after exit."""
    with serve_in_thread(APP) as base_url:
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", base_url)
        assert match
        assert int(match.group(1)) > 0
        with new_client(base_url) as client:
            assert client.get("/").text == "hello"
    with new_client(base_url) as client, pytest.raises(httpx.ConnectError):
        client.get("/")


def test_serve_in_thread_runs_the_lifespan_when_asked() -> None:
    """lifespan="on" (the broker needs it) runs startup and shutdown."""
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/", hello)], lifespan=lifespan)
    with serve_in_thread(app, lifespan="on"):
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


def test_serve_in_thread_reports_a_failed_startup() -> None:
    """A lifespan that fails makes serve_in_thread raise instead of hanging."""

    app = Starlette(lifespan=_broken_lifespan)
    with (
        pytest.raises(RuntimeError, match="exited during startup"),
        serve_in_thread(app, lifespan="on"),
    ):
        pass  # pragma: no cover


def test_fake_server_runs_inside_an_event_loop() -> None:
    """FakeServer.start() returns the URL once listening; stop() shuts it down."""

    async def scenario() -> tuple[str, str]:
        server = FakeServer(APP)
        base_url = await server.start()
        assert server.base_url == base_url
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()
        async with httpx.AsyncClient(base_url=base_url) as client:
            text = (await client.get("/")).text
        await server.stop()
        await server.stop()  # idempotent
        return base_url, text

    base_url, text = asyncio.run(scenario())
    assert text == "hello"
    assert base_url.startswith("http://127.0.0.1:")


def test_fake_server_turns_a_failed_startup_into_an_error() -> None:
    """uvicorn's sys.exit() on a failed startup must not escape into the shared loop."""

    async def scenario() -> str:
        server = FakeServer(Starlette(lifespan=_broken_lifespan), lifespan="on")
        with pytest.raises(RuntimeError, match="exited with status 3"):
            await server.start()
        await server.stop()  # nothing left to stop
        return "loop still alive"

    assert asyncio.run(scenario()) == "loop still alive"


def test_serve_runs_until_cancelled() -> None:
    """serve() reports its URL through on_started and shuts down on cancellation."""

    async def scenario() -> str:
        started: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.create_task(serve(APP, on_started=started.put_nowait))
        base_url = await asyncio.wait_for(started.get(), timeout=5)
        async with httpx.AsyncClient(base_url=base_url) as client:
            text = (await client.get("/")).text
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return text

    assert asyncio.run(scenario()) == "hello"


def test_base_url_before_start_is_an_error() -> None:
    """FakeServer.base_url is only known after start()."""
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeServer(FakeHub().app).base_url


def test_cli_runs_a_fake_and_prints_url_and_demo_credentials() -> None:
    """``python -m broker.fakes hub --ttl 5`` prints one line, serves, exits 0 on Ctrl+C."""
    command = [sys.executable, "-m", "broker.fakes", "hub", "--port", "0", "--ttl", "5"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert match, line
        assert f"client_id={DEMO_SERVICE_ID}" in line
        assert "ttl=5s" in line
        with new_client(match.group(1)) as client:
            response = client.get("/.well-known/openid-configuration")
        assert response.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
