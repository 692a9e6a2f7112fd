"""A sink file that cannot be written shows: the provider is ``degraded`` (the callers that
read the file are not served) with the reason in ``/providers`` and ``/readyz``, and it is
``ready`` again once a new token is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.core.tokens import place_token
from broker.engine.provider import new_provider
from broker.engine.sink_keeper import SinkKeeper
from broker.engine.tasks import Background
from broker.fakes import FakeOAuth2
from tests.inprocess import IdPs, in_process
from tests.support import FakeClock, settings_from

pytestmark = pytest.mark.anyio

IDP = "http://127.0.0.1:9001"
CONFIG = """
providers:
  p:
    type: oauth2
    grant: client_credentials
    token_url: "{idp}/oauth/token"
    client_id: app
    client_secret: app-secret
    sink:
      path: "{directory}/token"
"""


async def test_a_sink_in_a_missing_directory_degrades_the_provider_until_it_is_written(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    idps = IdPs(clock)
    idps.serve(IDP, FakeOAuth2(clients={"app": "app-secret"}, ttl=30.0, now=clock.wall).app)
    directory = tmp_path / "not-yet"
    config = CONFIG.format(idp=IDP, directory=directory)
    async with in_process(settings_from(config), idps) as broker:
        served = await broker.get("/token/p")
        status = (await broker.client.get("/providers")).json()["providers"]["p"]
        ready = (await broker.client.get("/readyz")).json()
    assert served.status_code == 200  # GET /token callers are unaffected
    assert status["state"] == "degraded"
    assert str(directory) in status["sink_error"]
    assert ready["ready"] is True
    assert ready["providers"]["p"]["error"]["code"] == "sink_error"


async def test_a_sink_that_can_be_written_again_clears_its_error(tmp_path: Path) -> None:
    """The keeper itself, awaited (its write is in a thread): failed, then written."""
    clock = FakeClock()
    settings = settings_from(CONFIG.format(idp=IDP, directory=tmp_path / "later"))
    provider = new_provider("p", settings)
    background = Background()
    keeper = SinkKeeper(clock, background)
    token = place_token(
        "at-0123456789",
        sent_at=clock.monotonic(),
        sent_at_wall=clock.wall(),
        lifetime=60.0,
        etag_key=b"k" * 32,
        serve_min_remaining=1.0,
    )
    provider.token = token
    await keeper.write(provider, token)
    failed = provider.sink_error
    degraded = provider.state(clock.monotonic())
    (tmp_path / "later").mkdir()
    await keeper.write(provider, token)
    await background.close()  # the file's planned removal
    assert failed is not None
    assert degraded == "degraded"
    assert provider.sink_error is None
    assert provider.state(clock.monotonic()) == "ready"
    assert (tmp_path / "later" / "token").read_text().strip() == "at-0123456789"
