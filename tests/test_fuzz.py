"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis): no answer is a server error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.result import Ok

from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from broker.web.app import create_app
from tests.support import running_broker, settings_from

KEY = "fuzz-client-key-3e8d1c07b5"

CONFIG = f"""
clients:
  fuzzer:
    key: {KEY}
    providers: ["*"]
    status: true
providers:
  idp:
    type: oauth2
    token_url: "{{url}}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret
"""

# The schema comes from the app itself, without running it.
schema = schemathesis.openapi.from_dict(
    create_app(settings_from(CONFIG.format(url="http://127.0.0.1:9"))).app.openapi()
)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """One broker and fake IdP for all generated cases (starting one per case is too slow)."""
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=300)
    with (
        serve_in_thread(fake.app) as url,
        running_broker(settings_from(CONFIG.format(url=url))) as client,
    ):
        yield str(client.base_url)


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.parametrize("authenticated", [True, False])
def test_no_server_errors(case: Any, base_url: str, authenticated: bool) -> None:
    """Whatever the path, query and headers, the broker answers 2xx/4xx or a deliberate 503."""
    headers = {"Authorization": f"Bearer {KEY}"} if authenticated else {}
    response = case.call(base_url=base_url, headers=headers)
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("error"), str), body


def test_schema_is_loaded() -> None:
    """The fuzzer sees every route (else the test above would silently test nothing)."""
    paths = {r.ok().path for r in schema.get_all_operations() if isinstance(r, Ok)}
    assert {"/token/{provider}", "/token/{provider}/refresh", "/providers"} <= paths
