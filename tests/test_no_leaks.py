"""Secrets and tokens never show up in logs, error bodies or status pages."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from broker.fakes import aerion, hiro, hub
from broker.fakes.aerion import FakeAerion
from broker.fakes.base import FakeProvider
from broker.fakes.hiro import FakeHiro
from broker.fakes.hub import FakeHub
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.support import running_broker, settings_from, wait_for

CLIENT_SECRET = "cs-6f1e0a9b-client-secret"
PASSWORD = "pw-93d2c7e4-user-password"

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


def test_nothing_secret_in_logs_or_responses(caplog: pytest.LogCaptureFixture) -> None:
    """An IdP that echoes our secrets in its errors, at DEBUG level: nothing leaks."""
    caplog.set_level(logging.DEBUG)
    fake = FakeOAuth2(clients={"app": CLIENT_SECRET}, users={"alice": PASSWORD}, ttl=60)
    echo = {
        "error": "invalid_client",
        "error_description": f"client secret {CLIENT_SECRET} / password {PASSWORD} refused",
    }
    fake.fail_next(2, 401, echo)
    with serve_in_thread(fake.app) as url:
        settings = settings_from(CONFIG.format(url=url, secret=CLIENT_SECRET, password=PASSWORD))
        with running_broker(settings) as client:
            wait_for(lambda: client.get("/providers").json()["providers"]["idp"]["failures"])
            bodies = [
                client.get("/providers").text,
                client.get("/readyz").text,
                client.get("/token/idp").text,
                client.get("/openapi.json").text,
            ]
            error = client.get("/providers").json()["providers"]["idp"]["last_error"]
            assert error["code"] == "invalid_client"
            assert "[redacted]" in error["message"]
    tokens = fake.issued_access_tokens
    logged = "\n".join(
        f"{record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    assert "invalid_client" in logged, "the failure should be logged"
    for secret in (CLIENT_SECRET, PASSWORD, *tokens):
        assert secret not in logged
        for body in bodies[:2]:
            assert secret not in body
    assert repr(settings).count("**********") >= 2
    assert CLIENT_SECRET not in repr(settings)
    assert PASSWORD not in repr(settings)


SCENARIOS: dict[str, tuple[Callable[[], FakeProvider], str, list[str]]] = {
    "hiro-app": (
        lambda: FakeHiro(ttl=2.5),
        f"type: hiro\nurl: '{{url}}'\nclient_id: {hiro.DEMO_CLIENT_ID}\n"
        f"client_secret: {hiro.DEMO_CLIENT_SECRET}\nusername: {hiro.DEMO_USERNAME}\n"
        f"password: {hiro.DEMO_PASSWORD}\n",
        [hiro.DEMO_CLIENT_SECRET, hiro.DEMO_PASSWORD],
    ),
    "hiro-token": (
        lambda: FakeHiro(ttl=2.5),
        f"type: hiro\nflow: token\nurl: '{{url}}'\nclient_id: {hiro.DEMO_CLIENT_ID}\n"
        f"client_secret: {hiro.DEMO_CLIENT_SECRET}\nusername: {hiro.DEMO_USERNAME}\n"
        f"password: {hiro.DEMO_PASSWORD}\n",
        [hiro.DEMO_CLIENT_SECRET, hiro.DEMO_PASSWORD],
    ),
    "aerion": (
        lambda: FakeAerion(ttl=2.5),
        f"type: aerion\nurl: '{{url}}'\ncompany_url: https://acme.aerion.app\n"
        f"client_id: {aerion.DEMO_CLIENT_ID}\nusername: {aerion.DEMO_EMAIL}\n"
        f"password: {aerion.DEMO_PASSWORD}\n",
        [aerion.DEMO_PASSWORD],
    ),
    "hub": (
        lambda: FakeHub(ttl=2.5),
        f"type: hub\nurl: '{{url}}'\nclient_id: {hub.DEMO_SERVICE_ID}\n"
        f"client_secret: {hub.DEMO_SERVICE_SECRET}\nscope: 0-0-0-0-0\n"
        f"username: {hub.DEMO_LOGIN}\npassword: {hub.DEMO_PASSWORD}\n",
        [hub.DEMO_SERVICE_SECRET, hub.DEMO_PASSWORD],
    ),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_no_leaks_across_provider_flows(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Login, refreshes, a failure, a revoked refresh token, at DEBUG: nothing secret leaks."""
    caplog.set_level(logging.DEBUG)
    make_fake, provider_yaml, secrets = SCENARIOS[name]
    fake = make_fake()
    with serve_in_thread(fake.app) as url:
        indented = "".join(f"    {line}\n" for line in provider_yaml.format(url=url).splitlines())
        config = "log_level: debug\nrefresh: {backoff_initial: 0.1, backoff_max: 0.5}\n"
        settings = settings_from(config + "providers:\n  p:\n" + indented)
        bodies: list[str] = []
        with running_broker(settings) as client:
            assert client.get("/token/p").status_code == 200
            fake.fail_next(1, 500)
            wait_for(lambda: len(fake.token_requests()) >= 3)
            fake.revoke_refresh_token(fake.issued_refresh_tokens[-1])
            wait_for(lambda: len(fake.token_requests()) >= 5)
            for path in ("/providers", "/readyz", "/token/nope", "/token/p?min_valid=x"):
                bodies.append(client.get(path).text)
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    issued = [*fake.issued_access_tokens, *fake.issued_refresh_tokens]
    assert issued, "the scenario must have issued tokens"
    for secret in [*secrets, *issued]:
        assert secret not in logged, f"{name}: a secret or token reached the log"
        for body in bodies:
            assert secret not in body, f"{name}: a secret or token reached a response body"
