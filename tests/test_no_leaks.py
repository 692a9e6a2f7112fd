"""Secrets and tokens never show up in logs, error bodies or status pages."""

from __future__ import annotations

import logging

import pytest

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
