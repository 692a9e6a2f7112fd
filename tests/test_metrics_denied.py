"""``broker_caller_denied_total{reason}``: every refusal of the request checks and of the
callers' keys is counted by its error code, on both paths (the fast path defers to the app,
which answers and counts once)."""

from __future__ import annotations

import pytest

from broker.fakes import FakeOAuth2
from tests.inprocess import IdPs, in_process
from tests.support import FakeClock, settings_from
from tests.test_replicas import sample

pytestmark = pytest.mark.anyio

IDP = "http://127.0.0.1:9001"
KEY = "ops-key-0123456789abcdef"
CONFIG = f"""
clients:
  ops:
    key: "{KEY}"
    providers: [a]
    status: true
providers:
  a:
    type: oauth2
    grant: client_credentials
    token_url: "{IDP}/oauth/token"
    client_id: app
    client_secret: app-secret
  b:
    type: oauth2
    grant: client_credentials
    token_url: "{IDP}/oauth/token"
    client_id: app
    client_secret: app-secret
"""


async def test_refusals_are_counted_by_reason() -> None:
    clock = FakeClock()
    idps = IdPs(clock)
    idps.serve(IDP, FakeOAuth2(clients={"app": "app-secret"}, now=clock.wall).app)
    ops = {"Authorization": f"Bearer {KEY}"}
    async with in_process(settings_from(CONFIG), idps) as broker:
        before = (await broker.client.get("/metrics", headers=ops)).text
        assert (await broker.get("/token/a", headers=ops)).status_code == 200
        for _ in range(3):
            assert (await broker.client.get("/token/a")).status_code == 401
        assert (await broker.client.get("/token/b", headers=ops)).status_code == 403
        page = {**ops, "Origin": "https://evil.example"}
        assert (await broker.client.get("/token/a", headers=page)).status_code == 403
        proxied = {**ops, "X-Forwarded-For": "10.0.0.1"}
        assert (await broker.client.get("/providers", headers=proxied)).status_code == 403
        after = (await broker.client.get("/metrics", headers=ops)).text
    series = 'broker_caller_denied_total{{reason="{}"}}'
    assert sample(before, series.format("unauthorized")) == 0
    assert sample(after, series.format("unauthorized")) == 3
    assert sample(after, series.format("forbidden")) == 1
    assert sample(after, series.format("browser_request")) == 1
    assert sample(after, series.format("proxied_request")) == 1
    assert sample(after, series.format("not_loopback")) == 0
