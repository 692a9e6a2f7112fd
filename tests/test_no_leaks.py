"""Secrets and tokens never show up in logs, error bodies or status pages.

The broker and the fakes run in one event loop on a fake clock (tests/inprocess.py). The
log is looked at twice: every record as logging made it (pytest's caplog, which sees a
record before any handler's filter does), and the lines the process would write
(tests.inprocess.process_log: the CLI's log setup, with the SecretFilter the broker's
lifespan adds to it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import pytest

from broker.config.settings import BrokerSettings
from broker.fakes import aerion, hiro, hub
from broker.fakes.aerion import FakeAerion
from broker.fakes.base import FakeProvider
from broker.fakes.hiro import FakeHiro
from broker.fakes.hub import FakeHub
from broker.fakes.oauth2 import FakeOAuth2
from tests.inprocess import IdPs, in_process, process_log
from tests.support import FakeClock, settings_from

pytestmark = pytest.mark.anyio

CLIENT_SECRET = "cs-6f1e0a9b-client-secret"
PASSWORD = "pw-93d2c7e4-user-password"

IDP = "http://127.0.0.1:9001"
"""The fake's origin: nothing listens there, IdPs routes by it."""

CONFIG = """
log_level: debug
refresh: {{backoff_initial: 0.1, backoff_max: 0.5}}
providers:
  idp:
    type: oauth2
    token_url: "{url}/oauth/token"
    grant: password
    client_id: app
    client_secret: {secret}
    username: alice
    password: {password}
"""


@functools.cache
def parsed(text: str) -> BrokerSettings:
    """Parsed once per text: settings are frozen, and each parse ends in a full
    gc.collect() (broker/config/yamlfile.py)."""
    return settings_from(text)


async def test_nothing_secret_in_logs_or_responses(caplog: pytest.LogCaptureFixture) -> None:
    """An IdP that echoes our secrets in its errors, at DEBUG level: nothing leaks."""
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    idps = IdPs(clock)
    fake = FakeOAuth2(
        clients={"app": CLIENT_SECRET}, users={"alice": PASSWORD}, ttl=60, now=clock.wall
    )
    echo = {
        "error": "invalid_client",
        "error_description": f"client secret {CLIENT_SECRET} / password {PASSWORD} refused",
    }
    fake.fail_next(2, 401, echo)
    idps.serve(IDP, fake.app)
    settings = parsed(CONFIG.format(url=IDP, secret=CLIENT_SECRET, password=PASSWORD))
    with process_log(settings) as log:
        async with in_process(settings, idps) as broker:

            async def failed() -> bool:
                answer = await broker.get("/providers")
                return bool(answer.json()["providers"]["idp"]["failures"])

            await broker.eventually(failed, within=10)
            bodies = [
                (await broker.get("/providers")).text,
                (await broker.get("/readyz")).text,
                (await broker.get("/token/idp")).text,
                (await broker.get("/openapi.json")).text,
            ]
            providers = (await broker.get("/providers")).json()
            error = providers["providers"]["idp"]["last_error"]
            assert error["code"] == "invalid_client"
            assert "[redacted]" in error["message"]
    tokens = fake.issued_access_tokens
    logged = "\n".join(
        f"{record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    written = log.getvalue()
    assert "invalid_client" in logged, "the failure should be logged"
    assert "invalid_client" in written, "the failure should be written"
    for secret in (CLIENT_SECRET, PASSWORD, *tokens):
        assert secret not in logged
        assert secret not in written
        for body in bodies[:2]:
            assert secret not in body
    assert repr(settings).count("**********") >= 2
    assert CLIENT_SECRET not in repr(settings)
    assert PASSWORD not in repr(settings)


Clock = Callable[[], float]

SCENARIOS: dict[str, tuple[Callable[[Clock], FakeProvider], str, list[str]]] = {
    "hiro-app": (
        lambda now: FakeHiro(ttl=2.5, now=now),
        f"type: hiro\nurl: '{{url}}'\nclient_id: {hiro.DEMO_CLIENT_ID}\n"
        f"client_secret: {hiro.DEMO_CLIENT_SECRET}\nusername: {hiro.DEMO_USERNAME}\n"
        f"password: {hiro.DEMO_PASSWORD}\n",
        [hiro.DEMO_CLIENT_SECRET, hiro.DEMO_PASSWORD],
    ),
    "hiro-token": (
        lambda now: FakeHiro(ttl=2.5, now=now),
        f"type: hiro\nflow: token\nurl: '{{url}}'\nclient_id: {hiro.DEMO_CLIENT_ID}\n"
        f"client_secret: {hiro.DEMO_CLIENT_SECRET}\nusername: {hiro.DEMO_USERNAME}\n"
        f"password: {hiro.DEMO_PASSWORD}\n",
        [hiro.DEMO_CLIENT_SECRET, hiro.DEMO_PASSWORD],
    ),
    "aerion": (
        lambda now: FakeAerion(ttl=2.5, now=now),
        f"type: aerion\nurl: '{{url}}'\ncompany_url: https://acme.aerion.app\n"
        f"client_id: {aerion.DEMO_CLIENT_ID}\nusername: {aerion.DEMO_EMAIL}\n"
        f"password: {aerion.DEMO_PASSWORD}\n",
        [aerion.DEMO_PASSWORD],
    ),
    "hub": (
        lambda now: FakeHub(ttl=2.5, now=now),
        f"type: hub\nurl: '{{url}}'\nclient_id: {hub.DEMO_SERVICE_ID}\n"
        f"client_secret: {hub.DEMO_SERVICE_SECRET}\nscope: 0-0-0-0-0\n"
        f"username: {hub.DEMO_LOGIN}\npassword: {hub.DEMO_PASSWORD}\n",
        [hub.DEMO_SERVICE_SECRET, hub.DEMO_PASSWORD],
    ),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_no_leaks_across_provider_flows(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Login, refreshes, a failure, a revoked refresh token, at DEBUG: nothing secret leaks."""
    caplog.set_level(logging.DEBUG)
    make_fake, provider_yaml, secrets = SCENARIOS[name]
    clock = FakeClock()
    idps = IdPs(clock)
    fake = make_fake(clock.wall)
    idps.serve(IDP, fake.app)
    indented = "".join(f"    {line}\n" for line in provider_yaml.format(url=IDP).splitlines())
    config = "log_level: debug\nrefresh: {backoff_initial: 0.1, backoff_max: 0.5}\n"
    settings = parsed(config + "providers:\n  p:\n" + indented)
    bodies: list[str] = []
    with process_log(settings) as log:
        async with in_process(settings, idps) as broker:

            def token_requests_reach(count: int) -> Callable[[], Awaitable[bool]]:
                async def reached() -> bool:
                    return len(fake.token_requests()) >= count

                return reached

            assert (await broker.get("/token/p")).status_code == 200
            fake.fail_next(1, 500)
            await broker.eventually(token_requests_reach(3), within=10)
            fake.revoke_refresh_token(fake.issued_refresh_tokens[-1])
            await broker.eventually(token_requests_reach(5), within=10)
            for path in ("/providers", "/readyz", "/token/nope", "/token/p?min_valid=x"):
                bodies.append((await broker.get(path)).text)
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    written = log.getvalue()
    issued = [*fake.issued_access_tokens, *fake.issued_refresh_tokens]
    assert issued, "the scenario must have issued tokens"
    assert "event=token_request_failed" in written, "the failure should be written"
    for secret in [*secrets, *issued]:
        assert secret not in logged, f"{name}: a secret or token reached the log"
        assert secret not in written, f"{name}: a secret or token reached the written log"
        for body in bodies:
            assert secret not in body, f"{name}: a secret or token reached a response body"
