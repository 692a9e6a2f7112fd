"""A sink file that cannot be written shows: the provider is ``degraded`` (the callers that
read the file are not served) with the reason in ``/providers`` and ``/readyz``, and it is
``ready`` again once a new token is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.fakes import FakeOAuth2
from tests.inprocess import IdPs, InProcess, in_process
from tests.support import FakeClock, settings_from

pytestmark = pytest.mark.anyio

IDP = "http://127.0.0.1:9001"


async def test_a_sink_in_a_missing_directory_degrades_the_provider_until_it_is_written(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    idps = IdPs(clock)
    idps.serve(IDP, FakeOAuth2(clients={"app": "app-secret"}, ttl=30.0, now=clock.wall).app)
    directory = tmp_path / "not-yet"
    config = f"""
providers:
  p:
    type: oauth2
    grant: client_credentials
    token_url: "{IDP}/oauth/token"
    client_id: app
    client_secret: app-secret
    sink:
      path: "{directory}/token"
"""
    async with in_process(settings_from(config), idps) as broker:
        served = await broker.get("/token/p")
        status = (await broker.client.get("/providers")).json()["providers"]["p"]
        ready = (await broker.client.get("/readyz")).json()
        directory.mkdir()
        # The next refresh (at two thirds of 30 s) writes the file; the write is in a
        # thread, so wait for what it sets when it is done, not for the refresh.
        await broker.eventually(lambda: sink_healed(broker), within=60, step=1)
        healed = (await broker.client.get("/providers")).json()["providers"]["p"]
    assert served.status_code == 200  # GET /token callers are unaffected
    assert status["state"] == "degraded"
    assert str(directory) in status["sink_error"]
    assert ready["ready"] is True
    assert ready["providers"]["p"]["error"]["code"] == "sink_error"
    assert healed["state"] == "ready"
    assert healed["sink_error"] is None
    assert (directory / "token").read_text().strip()


async def sink_healed(broker: InProcess) -> bool:
    status = (await broker.client.get("/providers")).json()["providers"]["p"]
    return status["sink_error"] is None
