"""arago's own ``hiro_graph_client`` logs in, refreshes and falls back against FakeHiro.

This is the strongest evidence the fake is faithful: the official client checks content
types, parses ``expires-at``, decodes the JWT payload and relies on HTTP 401 from
``/refresh`` to fall back to a full ``/app`` login.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hiro_graph_client.authclient import HiroAuth
from hiro_graph_client.clientlib import PasswordAuthTokenApiHandler

from broker.fakes.hiro import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_PASSWORD,
    DEMO_USERNAME,
    FakeHiro,
)
from broker.fakes.recording import RecordedRequest
from broker.fakes.server import serve_in_thread


@pytest.fixture(params=["6", "6.6"])
def fake_and_handler(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[FakeHiro, PasswordAuthTokenApiHandler]]:
    fake = FakeHiro(auth_version=request.param)
    with serve_in_thread(fake.app) as base_url:
        handler = PasswordAuthTokenApiHandler(
            root_url=base_url,
            username=DEMO_USERNAME,
            password=DEMO_PASSWORD,
            client_id=DEMO_CLIENT_ID,
            client_secret=DEMO_CLIENT_SECRET,
            # Fail fast instead of backing off if something unexpected happens.
            max_tries=1,
        )
        yield fake, handler


def paths(fake: FakeHiro) -> list[str]:
    return [r.path for r in fake.requests]


def sent(record: RecordedRequest) -> dict[str, Any]:
    """The JSON object a request carried."""
    assert isinstance(record.json, dict)
    return record.json


def test_official_client_logs_in_and_decodes_the_token(
    fake_and_handler: tuple[FakeHiro, PasswordAuthTokenApiHandler],
) -> None:
    """GET /api/version, then POST <auth>/app; the token is one the fake issued."""
    fake, handler = fake_and_handler
    token = handler.token
    assert [token] == fake.issued_access_tokens
    prefix = f"/api/auth/{fake.auth_version}"
    assert ["/api/version", f"{prefix}/app"] == paths(fake)
    assert handler.decode_token()["data"]["_IDENTITY"] == DEMO_USERNAME
    # expires-at was parsed as ms: the client schedules its refresh 5 s before it.
    assert fake.ttl * 1000 - 5000 == pytest.approx(
        handler.refresh_time() - fake.token_requests()[0].at * 1000, abs=1000
    )


def test_official_client_refreshes_with_the_rotated_refresh_token(
    fake_and_handler: tuple[FakeHiro, PasswordAuthTokenApiHandler],
) -> None:
    """refresh_token() POSTs /refresh with the issued refresh token and gets a new token."""
    fake, handler = fake_and_handler
    first = handler.token
    handler.refresh_token()
    second = handler.token
    assert second != first
    assert [first, second] == fake.issued_access_tokens
    refreshes = fake.token_requests("refresh_token")
    assert len(refreshes) == 1
    assert fake.issued_refresh_tokens[0] == sent(refreshes[0])["refresh_token"]
    handler.refresh_token()  # uses the rotated token; the first one is dead by now
    assert len(fake.token_requests("refresh_token")) == 2
    assert (
        fake.issued_refresh_tokens[1]
        == sent(fake.token_requests("refresh_token")[1])["refresh_token"]
    )
    assert len(fake.token_requests("password")) == 1


def test_official_client_falls_back_to_app_on_401_from_refresh(
    fake_and_handler: tuple[FakeHiro, PasswordAuthTokenApiHandler],
) -> None:
    """A revoked refresh token: /refresh answers 401, the client logs in again via /app."""
    fake, handler = fake_and_handler
    first = handler.token
    fake.revoke_refresh_token(fake.issued_refresh_tokens[-1])
    handler.refresh_token()
    assert handler.token not in (first, None)
    prefix = f"/api/auth/{fake.auth_version}"
    assert [f"{prefix}/app", f"{prefix}/refresh", f"{prefix}/app"] == paths(fake)[1:]
    assert fake.is_access_token_valid(handler.token)


def test_official_client_reads_me_account_and_revokes(
    fake_and_handler: tuple[FakeHiro, PasswordAuthTokenApiHandler],
) -> None:
    """HiroAuth.get_identity() sends the Bearer token; revoke_token() kills the refresh token."""
    fake, handler = fake_and_handler
    identity = HiroAuth(handler).get_identity()
    assert fake.identity_id(DEMO_USERNAME) == identity["ogit/_id"]
    rt = fake.issued_refresh_tokens[-1]
    handler.revoke_token()
    assert not fake.is_refresh_token_valid(rt)
    revoke = fake.requests[-1]
    expected_key = "token" if fake.auth_version == "6.6" else "refresh_token"
    assert rt == sent(revoke)[expected_key]
