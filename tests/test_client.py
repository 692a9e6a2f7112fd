"""broker_client against a real broker and a fake HIRO on 127.0.0.1.

The app side (httpx sync/async, requests) calls the fake HIRO's protected
``/api/auth/6/me/account``; the helpers take tokens from a broker served on a
real socket. Broker calls are counted with event hooks on an injected client.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import requests

from broker.fakes import hiro
from broker.fakes.hiro import FakeHiro
from broker.fakes.server import serve_in_thread
from broker_client import BrokerAuth, BrokerRequestsAuth, BrokerUnavailable
from tests.support import running_broker, settings_from

ME = "/api/auth/6/me/account"

CONFIG = f"""
providers:
  hiro:
    type: hiro
    url: "{{url}}"
    client_id: {hiro.DEMO_CLIENT_ID}
    client_secret: {hiro.DEMO_CLIENT_SECRET}
    username: {hiro.DEMO_USERNAME}
    password: {hiro.DEMO_PASSWORD}
"""


@dataclass
class Setup:
    fake: FakeHiro
    idp_url: str
    broker_url: str
    broker_calls: list[httpx.Request] = field(default_factory=list)

    def count(self, request: httpx.Request) -> None:
        self.broker_calls.append(request)

    async def acount(self, request: httpx.Request) -> None:
        self.broker_calls.append(request)

    def calls(self, method: str) -> int:
        return sum(1 for r in self.broker_calls if r.method == method)

    def api_requests(self) -> list[str]:
        """The Authorization header of every request the fake's me endpoint received."""
        return [r.headers.get("authorization", "") for r in self.fake.requests if r.path == ME]

    def counting_client(self) -> httpx.Client:
        return httpx.Client(event_hooks={"request": [self.count]})

    def counting_async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(event_hooks={"request": [self.acount]})


@pytest.fixture
def setup() -> Iterator[Setup]:
    fake = FakeHiro()
    with serve_in_thread(fake.app) as idp_url:
        settings = settings_from(CONFIG.replace("{url}", idp_url))
        with running_broker(settings) as broker:
            yield Setup(fake, idp_url, str(broker.base_url))


def current_token(setup: Setup) -> str:
    """The token the broker serves right now, straight from its API."""
    response = httpx.get(f"{setup.broker_url}/token/hiro?format=raw")
    assert response.status_code == 200
    return response.text


def test_token_reaches_the_api(setup: Setup) -> None:
    """The API receives the broker's token as a Bearer header and answers 200."""
    with httpx.Client(
        base_url=setup.idp_url, auth=BrokerAuth("hiro", broker_url=setup.broker_url)
    ) as app:
        response = app.get(ME)
    assert response.status_code == 200
    assert response.json()["ogit/name"] == hiro.DEMO_USERNAME
    assert setup.api_requests() == [f"Bearer {current_token(setup)}"]


def test_token_is_reused_until_refresh_before_expiry(setup: Setup) -> None:
    """N calls hit the broker once; past expires_in - refresh_before it fetches again."""
    now = [100.0]
    with setup.counting_client() as broker_client:
        auth = BrokerAuth(
            "hiro", broker_url=setup.broker_url, client=broker_client, clock=lambda: now[0]
        )
        with httpx.Client(base_url=setup.idp_url, auth=auth) as app:
            statuses = [app.get(ME).status_code for _ in range(5)]
            assert setup.calls("GET") == 1
            now[0] += 3600 - 30 - 2  # the fake's tokens live 3600 s; still fresh
            assert app.get(ME).status_code == 200
            assert setup.calls("GET") == 1
            now[0] += 2  # now within refresh_before (30 s) of expiry
            assert app.get(ME).status_code == 200
    assert statuses == [200] * 5
    assert setup.calls("GET") == 2
    assert setup.calls("POST") == 0


def test_401_forces_one_refresh_and_one_retry(setup: Setup) -> None:
    """A revoked token gets a 401; one POST .../refresh and one retry with the new token succeed."""
    with setup.counting_client() as broker_client:
        auth = BrokerAuth("hiro", broker_url=setup.broker_url, client=broker_client)
        with httpx.Client(base_url=setup.idp_url, auth=auth) as app:
            assert app.get(ME).status_code == 200
            old = auth.get_token()
            setup.fake.revoke_access_token(old)
            response = app.get(ME)
            second = app.get(ME)
    new = current_token(setup)
    assert new != old
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert second.status_code == 200
    assert setup.calls("POST") == 1
    assert setup.calls("GET") == 1
    assert [str(r.url) for r in setup.broker_calls if r.method == "POST"] == [
        f"{setup.broker_url.rstrip('/')}/token/hiro/refresh"
    ]
    assert setup.api_requests() == [
        f"Bearer {old}",
        f"Bearer {old}",
        f"Bearer {new}",
        f"Bearer {new}",
    ]
    assert len(setup.fake.token_requests("refresh_token")) == 1


def test_second_401_is_returned_without_looping(setup: Setup) -> None:
    """When the retry is refused too, the caller gets that 401; one refresh, two API calls."""
    setup.fake.fail_next(2, 401, target="api")
    with setup.counting_client() as broker_client:
        auth = BrokerAuth("hiro", broker_url=setup.broker_url, client=broker_client)
        with httpx.Client(base_url=setup.idp_url, auth=auth) as app:
            response = app.get(ME)
    assert response.status_code == 401
    assert len(response.history) == 1
    assert setup.calls("POST") == 1
    assert len(setup.api_requests()) == 2


def test_headers_go_to_the_broker_only(setup: Setup) -> None:
    """headers= reach the broker; the API sees only the bearer token from the broker."""
    client_key = "Bearer client-key-for-the-broker"
    with setup.counting_client() as broker_client:
        auth = BrokerAuth(
            "hiro",
            broker_url=setup.broker_url,
            client=broker_client,
            headers={"Authorization": client_key},
        )
        with httpx.Client(base_url=setup.idp_url, auth=auth) as app:
            assert app.get(ME).status_code == 200
    assert [r.headers["authorization"] for r in setup.broker_calls] == [client_key]
    assert setup.api_requests() == [f"Bearer {current_token(setup)}"]
    assert all("client-key" not in str(r.headers) for r in setup.fake.requests)


def test_concurrent_threads_share_one_broker_fetch(setup: Setup) -> None:
    """Eight threads starting at once with a cold cache cause one GET /token/hiro."""
    barrier = threading.Barrier(8)
    statuses: list[int] = []
    with setup.counting_client() as broker_client:
        auth = BrokerAuth("hiro", broker_url=setup.broker_url, client=broker_client)
        with httpx.Client(base_url=setup.idp_url, auth=auth) as app:

            def call() -> None:
                barrier.wait(timeout=10)
                statuses.append(app.get(ME).status_code)

            threads = [threading.Thread(target=call) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=10)
    assert statuses == [200] * 8
    assert setup.calls("GET") == 1


def test_retry_resends_the_request_body(setup: Setup) -> None:
    """A streamed body refused with 401 is sent again, whole, with the refreshed token."""
    seen: list[tuple[str, bytes]] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers["authorization"], request.read()))
        return httpx.Response(401 if len(seen) == 1 else 200)

    def body() -> Iterator[bytes]:
        yield b"part one, "
        yield b"part two"

    auth = BrokerAuth("hiro", broker_url=setup.broker_url)
    with httpx.Client(transport=httpx.MockTransport(api), auth=auth) as app:
        first = auth.get_token()
        response = app.post("http://api.invalid/upload", content=body())
    assert response.status_code == 200
    assert seen == [
        (f"Bearer {first}", b"part one, part two"),
        (f"Bearer {current_token(setup)}", b"part one, part two"),
    ]
    assert seen[0][0] != seen[1][0]


@pytest.mark.anyio
async def test_async_client(setup: Setup) -> None:
    """httpx.AsyncClient: the token reaches the API, is reused, and a 401 refreshes once."""
    async with setup.counting_async_client() as broker_client:
        auth = BrokerAuth("hiro", broker_url=setup.broker_url, async_client=broker_client)
        async with httpx.AsyncClient(base_url=setup.idp_url, auth=auth) as app:
            first = [(await app.get(ME)).status_code for _ in range(3)]
            setup.fake.revoke_access_token(await auth.aget_token())
            refreshed = await app.get(ME)
            setup.fake.fail_next(2, 401, target="api")
            refused = await app.get(ME)
    assert first == [200, 200, 200]
    assert refreshed.status_code == 200
    assert [r.status_code for r in refreshed.history] == [401]
    assert refused.status_code == 401
    assert setup.calls("GET") == 1
    assert setup.calls("POST") == 2  # one per refused request, never more
    assert len(setup.api_requests()) == 3 + 2 + 2


@pytest.mark.anyio
async def test_async_client_with_its_own_broker_clients(setup: Setup) -> None:
    """Without an injected client each broker call uses a short-lived AsyncClient."""
    auth = BrokerAuth("hiro", broker_url=setup.broker_url)
    async with httpx.AsyncClient(base_url=setup.idp_url, auth=auth) as app:
        response = await app.get(ME)
    assert response.status_code == 200
    assert setup.api_requests() == [f"Bearer {current_token(setup)}"]


def test_requests_session(setup: Setup) -> None:
    """requests: token reaches the API, is reused; a 401 refreshes once and retries once."""
    with setup.counting_client() as broker_client:
        auth = BrokerRequestsAuth("hiro", broker_url=setup.broker_url, client=broker_client)
        with requests.Session() as session:
            session.auth = auth
            url = setup.idp_url + ME
            first = [session.get(url, timeout=10).status_code for _ in range(3)]
            old = auth.get_token()
            setup.fake.revoke_access_token(old)
            refreshed = session.get(url, timeout=10)
            new = auth.get_token()
            setup.fake.fail_next(2, 401, target="api")
            refused = session.get(url, timeout=10)
    assert first == [200, 200, 200]
    assert new != old
    assert refreshed.status_code == 200
    assert [r.status_code for r in refreshed.history] == [401]
    assert refreshed.request.headers["Authorization"] == f"Bearer {new}"
    assert refused.status_code == 401
    assert setup.calls("GET") == 1
    assert setup.calls("POST") == 2
    assert setup.api_requests()[3:5] == [f"Bearer {old}", f"Bearer {new}"]
    assert len(setup.api_requests()) == 3 + 2 + 2


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_broker_down_raises_broker_unavailable() -> None:
    """No broker listening: BrokerUnavailable names the URL and the provider."""
    url = closed_port_url()
    auth = BrokerAuth("hiro", broker_url=url)
    with httpx.Client(auth=auth) as app, pytest.raises(BrokerUnavailable) as caught:
        app.get("http://api.invalid/")
    assert caught.value.code == "broker_unreachable"
    assert caught.value.status is None
    assert url in str(caught.value)
    assert "'hiro'" in str(caught.value)


def test_broker_error_carries_code_and_message(setup: Setup) -> None:
    """The broker's JSON error (unknown provider) becomes BrokerUnavailable's code and detail."""
    with pytest.raises(BrokerUnavailable) as caught:
        BrokerRequestsAuth("nope", broker_url=setup.broker_url).get_token()
    assert caught.value.status == 404
    assert caught.value.code == "unknown_provider"
    assert "nope" in caught.value.detail
    assert "unknown_provider" in str(caught.value)


def test_retry_after_and_garbage_answers() -> None:
    """A 503 keeps Retry-After; a 200 that is no token answer never echoes its body."""
    answers = [
        httpx.Response(
            503,
            json={"error": "token_unavailable", "message": "IdP down"},
            headers={"Retry-After": "7"},
        ),
        httpx.Response(200, text="<html>secret-looking-body</html>"),
    ]
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    with httpx.Client(transport=transport) as broker_client:
        auth = BrokerAuth("hiro", broker_url="http://broker.invalid", client=broker_client)
        with pytest.raises(BrokerUnavailable) as unavailable:
            auth.get_token()
        with pytest.raises(BrokerUnavailable) as garbage:
            auth.get_token()
    assert (unavailable.value.code, unavailable.value.detail) == ("token_unavailable", "IdP down")
    assert unavailable.value.retry_after == 7.0
    assert garbage.value.code == "invalid_response"
    assert "secret-looking-body" not in str(garbage.value)


def test_broker_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """BROKER_URL sets the broker's address; the default is http://127.0.0.1:8181."""
    monkeypatch.delenv("BROKER_URL", raising=False)
    assert BrokerAuth("hiro").broker_url == "http://127.0.0.1:8181"
    monkeypatch.setenv("BROKER_URL", "http://broker:8181/")
    assert BrokerAuth("hiro").broker_url == "http://broker:8181"
    assert BrokerRequestsAuth("hiro", broker_url="http://x:1").broker_url == "http://x:1"


def test_repr_never_shows_a_token(setup: Setup) -> None:
    """The cached token stays out of repr() of the helpers and of BrokerToken."""
    auth = BrokerAuth("hiro", broker_url=setup.broker_url)
    token = auth.get_token()
    assert token not in repr(auth)
    assert token not in repr(auth._source._cached)


def test_the_client_key_comes_from_broker_key_or_broker_key_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As ``broker token``: ``$BROKER_KEY``, else the file ``$BROKER_KEY_FILE`` names, goes to
    the broker as the client key, never to the API; explicit headers win; an unreadable file
    is a ValueError naming the variable, without the key."""
    key = "app-key-from-the-environment-7d1c"
    keyed = CONFIG.replace(
        "providers:", f"clients:\n  app: {{key: {key}, providers: [hiro]}}\nproviders:", 1
    )
    key_file = tmp_path / "key"
    key_file.write_text(f"{key}\n")
    for name in ("BROKER_KEY", "BROKER_KEY_FILE", "BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeHiro()
    with (
        serve_in_thread(fake.app) as idp_url,
        running_broker(settings_from(keyed.replace("{url}", idp_url))) as broker,
    ):
        url = str(broker.base_url)
        with pytest.raises(BrokerUnavailable) as without:
            BrokerAuth("hiro", broker_url=url).get_token()
        monkeypatch.setenv("BROKER_KEY_FILE", str(key_file))
        from_file = BrokerAuth("hiro", broker_url=url)
        with httpx.Client(base_url=idp_url, auth=from_file) as app:
            assert app.get(ME).status_code == 200
        monkeypatch.setenv("BROKER_KEY", key)
        monkeypatch.setenv("BROKER_KEY_FILE", str(tmp_path / "missing"))
        from_env = BrokerRequestsAuth("hiro", broker_url=url).get_token()
        monkeypatch.delenv("BROKER_KEY")
        with pytest.raises(ValueError, match=r"BROKER_KEY_FILE .*missing: No such file") as bad:
            BrokerAuth("hiro", broker_url=url)
        overridden = BrokerAuth("hiro", broker_url=url, headers={"Authorization": "Bearer x"})
        with pytest.raises(BrokerUnavailable) as wrong:
            overridden.get_token()
        served = current_token_of(url, key)
    assert without.value.code == "unauthorized"
    assert wrong.value.code == "unauthorized"
    assert from_env == served
    assert key not in str(bad.value)
    assert all(key not in str(r.headers) for r in fake.requests)


def current_token_of(broker_url: str, key: str) -> str:
    response = httpx.get(
        f"{broker_url}/token/hiro?format=raw", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    return response.text
