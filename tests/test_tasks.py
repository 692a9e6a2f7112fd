"""broker.engine.tasks.Background: the one owner of the engine's background tasks."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from pathlib import Path

import httpx
import pytest

from broker.core.errors import BrokerError
from broker.engine.manager import TokenManager
from broker.engine.tasks import Background
from tests.support import FakeClock, settings_from, settle

pytestmark = pytest.mark.anyio


async def test_a_task_is_held_until_it_ends() -> None:
    background = Background()
    gate = asyncio.Event()
    task = background.spawn(gate.wait(), name="fetch:a")
    assert len(background) == 1
    assert background.named("fetch:") == [task]
    assert background.named("refresh:") == []
    gate.set()
    await task
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert len(background) == 0


async def test_close_cancels_everything_and_refuses_new_tasks() -> None:
    background = Background()
    tasks = [background.spawn(asyncio.Event().wait(), name=f"refresh:{n}") for n in range(3)]
    await background.close()
    assert all(task.cancelled() for task in tasks)
    assert len(background) == 0

    async def late() -> None:
        pass

    coro = late()
    with pytest.raises(RuntimeError, match="shutting down: not starting late"):
        background.spawn(coro, name="late")
    # Closed, so Python does not warn that it was never awaited.
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


async def test_a_bug_is_logged_and_an_engine_failure_is_left_to_its_awaiter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def bug() -> None:
        raise ZeroDivisionError

    async def refused() -> None:
        raise BrokerError("the identity provider said no")

    background = Background()
    with caplog.at_level(logging.ERROR, logger="broker.manager"):
        for name, coro in (("sink:a", bug()), ("fetch:a", refused())):
            task = background.spawn(coro, name=name)
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
    assert [r.getMessage() for r in caplog.records] == ["background task sink:a failed"]
    assert caplog.records[0].exc_info is not None


async def test_stopping_the_engine_leaves_no_task_behind(tmp_path: Path) -> None:
    """Refresh loops, a request in flight and a sink file's planned removal all end."""
    gate = asyncio.Event()

    async def idp(request: httpx.Request) -> httpx.Response:
        if b"refresh_token" in request.content:
            await gate.wait()  # the refresh stays in flight until the engine stops
        return httpx.Response(
            200, json={"access_token": "tok", "expires_in": 30, "refresh_token": "rt"}
        )

    yaml_text = f"""
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: password
    client_id: app
    client_secret: app-secret
    username: alice
    password: alice-password
    sink: {{path: {tmp_path}/idp.token}}
"""
    clock = FakeClock()
    transport = httpx.MockTransport(idp)
    async with httpx.AsyncClient(transport=transport) as client:
        manager = TokenManager(
            settings_from(yaml_text), client=client, clock=clock, rng=random.Random(1)
        )
        await manager.start()
        await settle()
        provider = manager.providers["idp"]
        for _ in range(500):  # the sink file is written in a thread; its removal planned after
            if provider.sinks[0].expiry is not None:
                break
            await asyncio.sleep(0.01)
        await clock.advance(25)  # the refresh starts and hangs
        kinds = sorted(t.get_name() for t in manager.background.named(""))
        assert kinds == ["fetch:idp", "refresh:idp", "sink:idp"]
        await manager.stop(grace=0)
        assert len(manager.background) == 0
