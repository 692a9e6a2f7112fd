"""Wider world, token paths: trailing slashes, redirects and wrong methods.

Django-based servers serve ``/o/token/`` and answer 404 to ``/o/token``; moved servers answer
the old path with a redirect; a GET on a token endpoint is a 405. The fakes answer 404 and 405
with their own JSON error bodies and record the request.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from broker.fakes import FakeAerion, FakeHiro, FakeHub, FakeOAuth2, FakeProvider
from tests.fakes.helpers import Connect
from tests.fakes.world import OAUTH2_AUTH

GRANT = {"grant_type": "client_credentials"}


def post_token(client: httpx.Client, path: str, **kwargs: Any) -> httpx.Response:
    return client.post(path, data=GRANT, headers=OAUTH2_AUTH, **kwargs)


def assert_json_404(fake: FakeProvider, response: httpx.Response, path: str) -> None:
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}
    assert fake.requests[-1].path == path
    assert path not in [r.path for r in fake.token_requests()]


def test_a_slashed_token_path_is_served_as_given_and_the_bare_one_is_a_404(
    connect: Connect,
) -> None:
    """token_path="/o/token/": that path works; /o/token is the fake's JSON 404, no 307."""
    fake = FakeOAuth2(token_path="/o/token/")
    client = connect(fake.app)
    assert_json_404(fake, post_token(client, "/o/token"), "/o/token")
    assert post_token(client, "/o/token/").status_code == 200
    assert [r.path for r in fake.token_requests()] == ["/o/token/"]


@pytest.mark.parametrize("switch", [False, True], ids=["off", "on"])
def test_trailing_slash_token_path_moves_the_endpoint_to_the_slashed_spelling(
    connect: Connect, switch: bool
) -> None:
    """On: /oauth/token/ only, and the metadata says so; off: /oauth/token only."""
    fake = FakeOAuth2(trailing_slash_token_path=switch)
    client = connect(fake.app)
    served, missing = (
        ("/oauth/token/", "/oauth/token") if switch else ("/oauth/token", "/oauth/token/")
    )
    assert fake.served_token_path == served
    assert_json_404(fake, post_token(client, missing), missing)
    assert post_token(client, served).status_code == 200
    metadata = client.get("/.well-known/oauth-authorization-server").json()
    assert metadata["token_endpoint"].endswith(served)


@pytest.mark.parametrize(
    ("make", "path", "status"),
    [
        (FakeOAuth2, "/oauth/token", 405),
        (FakeHub, "/api/rest/oauth2/token", 405),
        (FakeHiro, "/api/auth/6/app", 405),
        (FakeHiro, "/api/auth/6/token", 405),
        # node-oauth2-server answers every method itself: "Method must be POST ...".
        (FakeAerion, "/oauth2/token", 400),
    ],
)
def test_get_on_a_token_endpoint(connect: Connect, make: Any, path: str, status: int) -> None:
    """405 with Allow: POST and the provider's JSON error (Aerion: its own 400); recorded."""
    fake = make()
    response = connect(fake.app).get(path)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    if status == 405:
        assert response.headers["allow"] == "POST"
    assert [(r.method, r.path) for r in fake.requests] == [("GET", path)]


def test_a_308_redirect_to_a_local_path_is_followed_with_the_post(connect: Connect) -> None:
    """redirect_token_path_to="/o/token/": the old path answers 308 with an absolute
    Location and the new path serves tokens; a client that follows keeps its POST."""
    fake = FakeOAuth2(redirect_token_path_to="/o/token/")
    client = connect(fake.app)
    moved = post_token(client, "/oauth/token")
    assert moved.status_code == 308
    assert moved.headers["location"] == f"{client.base_url}".rstrip("/") + "/o/token/"
    assert fake.issued_access_tokens == []
    followed = post_token(client, "/oauth/token", follow_redirects=True)
    assert followed.status_code == 200
    assert followed.json()["access_token"] == fake.issued_access_tokens[0]
    paths = [r.path for r in fake.token_requests("client_credentials")]
    assert paths == ["/oauth/token", "/oauth/token", "/o/token/"]


def test_a_301_makes_a_following_client_get_and_that_is_a_405(connect: Connect) -> None:
    """Django's APPEND_SLASH style 301: clients turn the POST into a GET and lose the form."""
    fake = FakeOAuth2(
        token_path="/o/token", redirect_token_path_to="/o/token/", redirect_status=301
    )
    client = connect(fake.app)
    assert post_token(client, "/o/token").status_code == 301
    followed = post_token(client, "/o/token", follow_redirects=True)
    assert followed.status_code == 405
    assert [(r.method, r.path) for r in fake.requests[-2:]] == [
        ("POST", "/o/token"),
        ("GET", "/o/token/"),
    ]


def test_a_redirect_to_another_server_names_it_verbatim(connect: Connect) -> None:
    """A full URL goes into Location as given and nothing local is served at its path."""
    elsewhere = "https://idp.example/o/token/"
    fake = FakeOAuth2(redirect_token_path_to=elsewhere, redirect_status=307)
    client = connect(fake.app)
    response = post_token(client, "/oauth/token")
    assert (response.status_code, response.headers["location"]) == (307, elsewhere)
    assert_json_404(fake, post_token(client, "/o/token/"), "/o/token/")


def test_no_redirect_by_default_and_none_to_itself(connect: Connect) -> None:
    """Off: the token path serves tokens. A redirect to the token path itself is refused."""
    assert post_token(connect(FakeOAuth2().app), "/oauth/token").status_code == 200
    with pytest.raises(ValueError, match="redirect to itself"):
        _ = FakeOAuth2(redirect_token_path_to="/oauth/token").app
