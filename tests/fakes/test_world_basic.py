"""Wider world, client authentication: basic_form_encoded (RFC 6749 §2.3.1).

A client may put its id and secret into ``Authorization: Basic`` as they are ("verbatim") or
form-url-encode them first, as RFC 6749 §2.3.1 requires ("encoded"). The two only differ for
characters such as ``+ % : space`` or non-ASCII, so these tests use such secrets (the demo
secrets are plain and would pass either way). Off, the fakes accept both spellings; on, only
the encoded one, like a strict server.

FakeAerion is not here: node-oauth2-server reads Basic verbatim and the switch is ignored.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote_plus

import httpx
import pytest

from broker.fakes import FakeHiro, FakeHub, FakeOAuth2, FakeProvider, HubService, hiro, oauth2
from tests.fakes.helpers import Connect

CLIENT_ID = "world client+1"
SECRETS = ["s3cr+t:with %2B/and spaces", "grüße:€ 100%"]


def verbatim(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def encoded(client_id: str, secret: str) -> str:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


@dataclass(frozen=True)
class Server:
    """A fake registering ``CLIENT_ID`` with a secret, and a Basic-authenticated token request."""

    name: str
    make: Callable[[str, bool], FakeProvider]
    send: Callable[[httpx.Client, str], httpx.Response]


def _oauth2(secret: str, strict: bool) -> FakeProvider:
    return FakeOAuth2(clients={CLIENT_ID: secret}, basic_form_encoded=strict)


def _hub(secret: str, strict: bool) -> FakeProvider:
    return FakeHub(services={CLIENT_ID: HubService(CLIENT_ID, secret)}, basic_form_encoded=strict)


def _hiro(secret: str, strict: bool) -> FakeProvider:
    return FakeHiro(clients={CLIENT_ID: secret}, basic_form_encoded=strict)


def _client_credentials(path: str) -> Callable[[httpx.Client, str], httpx.Response]:
    def send(client: httpx.Client, authorization: str) -> httpx.Response:
        form = {"grant_type": "client_credentials"}
        return client.post(path, data=form, headers={"Authorization": authorization})

    return send


def _hiro_password(client: httpx.Client, authorization: str) -> httpx.Response:
    form = {"grant_type": "password", "username": hiro.DEMO_USERNAME}
    form |= {"password": hiro.DEMO_PASSWORD}
    headers = {"Authorization": authorization}
    return client.post("/api/auth/6.6/token", data=form, headers=headers)


SERVERS = [
    Server("oauth2", _oauth2, _client_credentials("/oauth/token")),
    Server("hub", _hub, _client_credentials("/api/rest/oauth2/token")),
    Server("hiro-token", _hiro, _hiro_password),
]


@pytest.mark.parametrize("server", SERVERS, ids=[s.name for s in SERVERS])
@pytest.mark.parametrize("secret", SECRETS, ids=["plus-colon-percent-space", "non-ascii"])
@pytest.mark.parametrize(
    ("strict", "encoding", "status"),
    [
        (False, encoded, 200),
        (False, verbatim, 200),
        (True, encoded, 200),
        (True, verbatim, 401),
    ],
    ids=["off-encoded", "off-verbatim", "on-encoded", "on-verbatim"],
)
def test_which_client_encoding_gets_in(
    connect: Connect,
    server: Server,
    secret: str,
    strict: bool,
    encoding: Callable[[str, str], str],
    status: int,
) -> None:
    """Off: both spellings work. On: only the §2.3.1 spelling; verbatim is a bad client."""
    fake = server.make(secret, strict)
    response = server.send(connect(fake.app), encoding(CLIENT_ID, secret))
    assert response.status_code == status, response.text
    if status == 200:
        assert fake.issued_access_tokens == [response.json()["access_token"]]
    else:
        assert fake.issued_access_tokens == []
        error = response.json()["error"]
        assert error == "invalid_client" or error["code"] == 401


def test_the_test_secrets_tell_the_encodings_apart() -> None:
    """The two spellings differ for the test credentials and agree for the demo ones, which
    is why no test of this switch may rely on the demo credentials."""
    for secret in SECRETS:
        assert encoded(CLIENT_ID, secret) != verbatim(CLIENT_ID, secret)
    demo = (oauth2.DEMO_CLIENT_ID, oauth2.DEMO_CLIENT_SECRET)
    assert encoded(*demo) == verbatim(*demo)


def test_the_switch_is_a_mutable_attribute(connect: Connect) -> None:
    """Flipped on a running fake, the next request is read strictly."""
    fake = FakeOAuth2(clients={CLIENT_ID: SECRETS[0]})
    client = connect(fake.app)
    send = SERVERS[0].send
    assert send(client, verbatim(CLIENT_ID, SECRETS[0])).status_code == 200
    fake.basic_form_encoded = True
    assert send(client, verbatim(CLIENT_ID, SECRETS[0])).status_code == 401
