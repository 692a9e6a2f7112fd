"""The surface every fake shares: recording, canned failures, clock, seeding, revocation."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import httpx
import pytest

from broker.fakes import (
    FakeAerion,
    FakeHiro,
    FakeHub,
    FakeOAuth2,
    FakeProvider,
    RecordedRequest,
    aerion,
    hiro,
    hub,
    oauth2,
)
from tests.fakes.helpers import Clock, Connect, basic, new_client


@dataclass(frozen=True)
class Kind:
    """How to build one fake and log in to it; ``login`` returns (access, refresh) tokens."""

    name: str
    make: Callable[..., FakeProvider]
    login: Callable[[httpx.Client], tuple[str, str]]
    token_path: str
    me_path: str
    seed: Callable[[Any], str]
    grant: str = "password"  # the grant ``login`` uses, as token_requests() names it


def _hiro_login(client: httpx.Client) -> tuple[str, str]:
    body = client.post(
        "/api/auth/6/app",
        json={
            "client_id": hiro.DEMO_CLIENT_ID,
            "client_secret": hiro.DEMO_CLIENT_SECRET,
            "username": hiro.DEMO_USERNAME,
            "password": hiro.DEMO_PASSWORD,
        },
    ).json()
    return body["_TOKEN"], body["refresh_token"]


def _aerion_login(client: httpx.Client) -> tuple[str, str]:
    form = {
        "grant_type": "password",
        "username": aerion.DEMO_EMAIL,
        "password": aerion.DEMO_PASSWORD,
        "client_id": aerion.DEMO_CLIENT_ID,
        "client_secret": aerion.DEMO_CLIENT_SECRET,
    }
    body = client.post("/oauth2/token", data=form, headers={"Origin": "https://acme.aerion.app"})
    return body.json()["access_token"], body.json()["refresh_token"]


def _hub_login(client: httpx.Client) -> tuple[str, str]:
    form = {
        "grant_type": "password",
        "username": hub.DEMO_LOGIN,
        "password": hub.DEMO_PASSWORD,
        "scope": hub.HUB_SERVICE_ID,
        "access_type": "offline",
    }
    auth = {"Authorization": basic(hub.DEMO_SERVICE_ID, hub.DEMO_SERVICE_SECRET)}
    body = client.post("/api/rest/oauth2/token", data=form, headers=auth).json()
    return body["access_token"], body["refresh_token"]


def _oauth2_login(client: httpx.Client) -> tuple[str, str]:
    form = {
        "grant_type": "password",
        "username": oauth2.DEMO_USERNAME,
        "password": oauth2.DEMO_PASSWORD,
    }
    auth = {"Authorization": basic(oauth2.DEMO_CLIENT_ID, oauth2.DEMO_CLIENT_SECRET)}
    body = client.post("/oauth/token", data=form, headers=auth).json()
    return body["access_token"], body["refresh_token"]


KINDS = [
    Kind(
        "hiro",
        FakeHiro,
        _hiro_login,
        "/api/auth/6/app",
        "/api/auth/6/me/account",
        lambda fake: fake.seed_refresh_token(hiro.DEMO_USERNAME),
    ),
    Kind(
        "aerion",
        FakeAerion,
        _aerion_login,
        "/oauth2/token",
        "/v1/users/me",
        lambda fake: fake.seed_refresh_token(aerion.DEMO_EMAIL, tenant="acme"),
    ),
    Kind(
        "hub",
        FakeHub,
        _hub_login,
        "/api/rest/oauth2/token",
        "/api/rest/users/me",
        lambda fake: fake.seed_refresh_token(hub.DEMO_LOGIN),
    ),
    Kind(
        "oauth2",
        FakeOAuth2,
        _oauth2_login,
        "/oauth/token",
        "/userinfo",
        lambda fake: fake.seed_refresh_token(oauth2.DEMO_USERNAME),
    ),
]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    param: Kind = request.param
    return param


def me_status(client: httpx.Client, kind: Kind, token: str) -> int:
    return client.get(kind.me_path, headers={"Authorization": f"Bearer {token}"}).status_code


def test_defaults_work_and_tokens_are_recorded(connect: Connect, kind: Kind) -> None:
    """The demo defaults log in; issued tokens are listed in order and accepted by "me"."""
    fake = kind.make()
    client = connect(fake.app)
    access, refresh = kind.login(client)
    assert fake.issued_access_tokens == [access]
    assert fake.issued_refresh_tokens == [refresh]
    assert fake.is_access_token_valid(access)
    assert fake.is_refresh_token_valid(refresh)
    assert me_status(client, kind, access) == 200
    assert not fake.is_access_token_valid("nope")
    assert not fake.is_refresh_token_valid("nope")


def test_tokens_expire_exactly_at_ttl_by_the_fakes_clock(
    connect: Connect, kind: Kind, clock: Clock
) -> None:
    """A fractional ttl: valid at ttl - 1 ms, dead at ttl; changing .ttl affects new tokens."""
    fake = kind.make(ttl=1.5, now=clock)
    client = connect(fake.app)
    access, _ = kind.login(client)
    clock.advance(1.499)
    assert fake.is_access_token_valid(access)
    assert me_status(client, kind, access) == 200
    clock.advance(0.001)
    assert not fake.is_access_token_valid(access)
    assert me_status(client, kind, access) in (401, 403)
    fake.ttl = 10
    longer, _ = kind.login(client)
    clock.advance(9.9)
    assert fake.is_access_token_valid(longer)


def test_requests_are_recorded_faithfully(connect: Connect, kind: Kind) -> None:
    """RecordedRequest: method, path, query, lower-cased headers, form or json, wall time."""
    fake = kind.make()
    client = connect(fake.app)
    before = time.time()
    kind.login(client)
    client.get(kind.me_path, params={"x": "1"}, headers={"X-Probe": "yes"})
    after = time.time()
    login, probe = fake.requests
    assert [f.name for f in fields(RecordedRequest)] == [
        "method",
        "path",
        "query",
        "headers",
        "form",
        "json",
        "at",
    ]
    assert login.method == "POST"
    assert (login.form is None) == (kind.name == "hiro")
    assert (login.json is None) != (kind.name == "hiro")
    assert fake.token_requests(kind.grant) == [login]
    assert fake.token_requests("refresh_token") == []
    assert probe.method == "GET"
    assert probe.path == kind.me_path
    assert probe.query == {"x": "1"}
    assert probe.headers["x-probe"] == "yes"
    assert all(name == name.lower() for name in probe.headers)
    assert probe.form is None
    assert probe.json is None
    assert before <= login.at <= probe.at <= after


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ({"error": "custom"}, None),
        ("upstream exploded", "text/plain; charset=utf-8"),
        (b"<html>502</html>", "text/html"),
    ],
)
def test_fail_next_serves_canned_responses_then_recovers(
    connect: Connect, kind: Kind, body: Any, content_type: str | None
) -> None:
    """fail_next(2, ...): two canned answers (still recorded), then normal service."""
    fake = kind.make()
    client = connect(fake.app)
    headers = {"Retry-After": "7"}
    if content_type == "text/html":
        headers["Content-Type"] = "text/html"
    fake.fail_next(2, 503, body, headers)
    for _ in range(2):
        canned = client.post(kind.token_path, data={"grant_type": "password"})
        assert canned.status_code == 503
        assert canned.headers["retry-after"] == "7"
        if isinstance(body, dict):
            assert canned.json() == body
            assert canned.headers["content-type"].startswith("application/json")
        else:
            assert canned.headers["content-type"] == content_type
            assert canned.content == (body.encode() if isinstance(body, str) else body)
    access, _ = kind.login(client)
    assert fake.issued_access_tokens == [access]
    assert len(fake.token_requests()) == 3


def test_fail_next_can_target_the_me_endpoint(connect: Connect, kind: Kind) -> None:
    """target="api": the protected endpoint fails once; token endpoint unaffected."""
    fake = kind.make()
    client = connect(fake.app)
    fake.fail_next(1, 401, target="api")
    access, _ = kind.login(client)
    assert me_status(client, kind, access) == 401
    assert me_status(client, kind, access) == 200


def test_seed_and_revoke_refresh_tokens(kind: Kind) -> None:
    """Seeded refresh tokens are valid and listed; revoke_refresh_token kills them."""
    fake = kind.make()
    rt = kind.seed(fake)
    assert fake.issued_refresh_tokens == [rt]
    assert fake.is_refresh_token_valid(rt)
    fake.revoke_refresh_token(rt)
    assert not fake.is_refresh_token_valid(rt)


def test_concurrent_logins_are_all_recorded(switchboard: Any, kind: Kind) -> None:
    """Many client threads at once: every request and token is recorded exactly once."""
    board, base_url = switchboard
    fake = kind.make()
    board.target = fake.app

    def login(_: int) -> str:
        with new_client(base_url) as client:
            return kind.login(client)[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = list(pool.map(login, range(24)))
    board.target = None
    assert sorted(tokens) == sorted(fake.issued_access_tokens)
    assert len(set(tokens)) == 24
    assert len(fake.token_requests(kind.grant)) == 24


def test_unknown_paths_get_a_json_404_and_are_recorded(connect: Connect, kind: Kind) -> None:
    """A client calling a wrong URL sees the provider's JSON error and shows up in .requests."""
    fake = kind.make()
    response = connect(fake.app).get("/no/such/path")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert [r.path for r in fake.requests] == ["/no/such/path"]
    assert fake.token_requests() == []


def test_the_other_slash_spelling_is_served_or_a_json_404_never_a_redirect(
    connect: Connect, kind: Kind
) -> None:
    """Strict routing: HIRO and Aerion (Express) serve both spellings; Hub and OAuth2 answer
    the other spelling with their recorded JSON 404, not Starlette's 307 to the right one."""
    fake = kind.make()
    client = connect(fake.app)
    slashed = kind.token_path + "/"
    response = client.post(slashed, data={"grant_type": "password"})
    if kind.name in ("hiro", "aerion"):
        assert response.status_code in (400, 401)
        assert fake.token_requests()[0].path == slashed
    else:
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/json")
        assert [r.path for r in fake.requests] == [slashed]
        assert fake.token_requests() == []
