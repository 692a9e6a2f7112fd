"""The token contract at its edges, through the broker's HTTP API against fakes on 127.0.0.1.

Forced refresh by ETag/If-Match, the caller rate limit, the serving floor,
answers during backoff, provider states, and the fast path answering exactly
as the FastAPI route does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from broker.web.app import create_app
from broker.web.fastpath import TokenFastPath
from tests.support import FakeClock, running_broker, settings_from, wait_for

SECRET = "app-secret-7c1d"

CONFIG = """
request_timeout: 5
refresh: {{backoff_initial: 0.2, backoff_max: 1, caller_burst: {burst}, caller_interval: 30}}
providers:
  idp:
    type: oauth2
    token_url: "{url}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: {secret}
"""


def config(url: str, burst: int = 10) -> str:
    return CONFIG.format(url=url, secret=SECRET, burst=burst)


@contextmanager
def broker(ttl: float = 300.0, burst: int = 10) -> Iterator[tuple[httpx.Client, FakeOAuth2]]:
    fake = FakeOAuth2(clients={"app": SECRET}, ttl=ttl)
    with serve_in_thread(fake.app) as url, running_broker(settings_from(config(url, burst))) as c:
        yield c, fake


# -- forced refresh: ETag and If-Match ------------------------------------------------------


def test_every_token_answer_names_its_token_by_etag() -> None:
    """ETag header and JSON etag agree, on JSON and raw answers; the tag is not the token."""
    with broker() as (client, fake):
        assert fake.token_requests()[0].headers["user-agent"].startswith("credential-broker/")
        body = client.get("/token/idp").json()
        raw = client.get("/token/idp", headers={"Accept": "text/plain"})
        assert client.get("/token/idp").headers["etag"] == body["etag"] == raw.headers["etag"]
        assert body["etag"][0] == body["etag"][-1] == '"'
        assert body["access_token"] not in body["etag"]


def test_a_refused_token_is_never_handed_back_and_a_crowd_causes_one_refresh() -> None:
    """Right after start-up, If-Match with the current token refreshes (no cooldown); every
    later caller naming the same refused token gets the new one without a request."""
    with broker() as (client, fake):
        refused = client.get("/token/idp").json()
        first = client.post("/token/idp/refresh", headers={"If-Match": refused["etag"]})
        assert first.status_code == 200
        assert first.json()["access_token"] != refused["access_token"]
        assert first.headers["etag"] == first.json()["etag"] != refused["etag"]
        for _ in range(20):
            again = client.post("/token/idp/refresh", headers={"If-Match": refused["etag"]})
            assert again.json()["access_token"] == first.json()["access_token"]
        by_query = client.post(f"/token/idp/refresh?rejected={refused['etag'].strip(chr(34))}")
        assert by_query.json()["access_token"] == first.json()["access_token"]
        assert len(fake.token_requests()) == 2


def test_forced_refresh_without_if_match_always_reaches_the_idp() -> None:
    """Two forced refreshes in a row are two new tokens."""
    with broker() as (client, fake):
        client.get("/token/idp")
        tokens = {client.post("/token/idp/refresh").json()["access_token"] for _ in range(2)}
        assert len(tokens) == 2
        assert len(fake.token_requests()) == 3


# -- the caller rate limit -------------------------------------------------------------------


def test_a_loop_of_forced_refreshes_is_cut_off_with_429() -> None:
    """A burst of 3 goes through; then 429 refresh_rate_limited with Retry-After, counted."""
    with broker(burst=3) as (client, fake):
        client.get("/token/idp")
        answers = [client.post("/token/idp/refresh") for _ in range(6)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429, 429]
        limited = answers[-1]
        assert limited.json()["error"] == "refresh_rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 30
        assert len(fake.token_requests()) == 4
        assert client.get("/token/idp").status_code == 200  # plain reads are never limited
        metrics = client.get("/metrics").text
        assert 'broker_caller_fetches_refused_total{provider="idp"} 3.0' in metrics


def test_min_valid_just_under_the_lifetime_cannot_loop_the_idp() -> None:
    """GET ?min_valid=<lifetime - 1> in a loop: one request per allowance, then 429."""
    with broker(ttl=60, burst=2) as (client, fake):
        client.get("/token/idp")
        # Each new token meets min_valid=59 for about a second; then the caller asks again.
        limited = wait_for(
            lambda: client.get("/token/idp?min_valid=59").status_code == 429, timeout=6
        )
        assert limited
        assert len(fake.token_requests()) == 3  # the login and the burst of 2
        answer = client.get("/token/idp?min_valid=59")
        assert answer.json()["error"] == "refresh_rate_limited"
        assert client.get("/token/idp").status_code == 200


# -- answers during backoff ------------------------------------------------------------------


def test_forced_refresh_during_backoff_serves_the_valid_token_flagged() -> None:
    """A retry not yet due: 200 with the current token and X-Broker-Refresh-Failed, not 503;
    unless the caller says that very token was refused."""
    with broker() as (client, fake):
        current = client.get("/token/idp").json()
        fake.fail_next(1000, 503, {"error": "temporarily_unavailable"}, {"Retry-After": "60"})
        failed = client.post("/token/idp/refresh")
        assert failed.status_code == 200
        assert failed.json()["access_token"] == current["access_token"]
        assert failed.headers["x-broker-refresh-failed"] == "temporarily_unavailable"
        during = client.post("/token/idp/refresh")
        assert during.status_code == 200
        assert during.headers["x-broker-refresh-failed"] == "temporarily_unavailable"
        refused = client.post("/token/idp/refresh", headers={"If-Match": current["etag"]})
        assert refused.status_code == 503
        assert refused.json()["error"] == "token_unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        assert len(fake.token_requests()) == 2  # the login and the one failed refresh


# -- the serving floor -----------------------------------------------------------------------


def test_no_answer_has_less_than_a_second_left_or_comes_after_its_expires_at() -> None:
    """A 3 s token whose refreshes fail: every 200 has expires_in >= 1 and arrives before the
    expires_at it states; then 503, never a token in its last second."""
    with broker(ttl=3) as (client, fake):
        fake.fail_next(1000, 503)
        seen: list[tuple[int, float, float]] = []
        statuses: list[int] = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            response = client.get("/token/idp")
            received = time.time()
            statuses.append(response.status_code)
            if response.status_code == 200:
                body = response.json()
                expires_at = datetime.fromisoformat(body["expires_at"]).timestamp()
                seen.append((body["expires_in"], received, expires_at))
        assert seen, "the first token was served"
        assert min(expires_in for expires_in, _, _ in seen) >= 1
        assert all(received < expires_at - 0.9 for _, received, expires_at in seen)
        assert statuses[-1] == 503
        providers = client.get("/providers").json()["providers"]["idp"]
        assert providers["expires_in"] is None
        assert client.get("/readyz").status_code == 503


def test_a_sink_never_holds_a_token_it_may_not_serve(tmp_path: Path) -> None:
    """The sink file holds the token while it may be served, is removed when it may not
    (no replacement came), and comes back with the next token."""
    sink = tmp_path / "idp.json"
    fake = FakeOAuth2(clients={"app": SECRET}, ttl=3)
    with serve_in_thread(fake.app) as url:
        text = config(url) + f"    sink: {{path: {sink}, format: json}}\n"
        with running_broker(settings_from(text)) as client:
            written = json.loads(wait_for(lambda: sink.read_text() if sink.exists() else ""))
            assert written["access_token"] == client.get("/token/idp").json()["access_token"]
            assert written["expires_in"] >= 1
            fake.fail_next(1000, 503)
            wait_for(lambda: not sink.exists(), timeout=5)
            assert client.get("/token/idp").status_code == 503
            fake.recover()
            again = json.loads(
                wait_for(lambda: sink.read_text() if sink.exists() else "", timeout=10)
            )
            assert again["access_token"] != written["access_token"]


# -- states ------------------------------------------------------------------------------------


def test_a_provider_whose_tokens_keep_dying_is_never_starting_again() -> None:
    """Tokens that live 1 s can never be served (floor 1 s): the state says failing, with
    the reason, from the first answer on; starting is only before any outcome."""
    with broker(ttl=1.5) as (client, fake):
        deadline = time.monotonic() + 2.5
        states = set()
        while time.monotonic() < deadline:
            status = client.get("/providers").json()["providers"]["idp"]
            if status["refreshes"] or status["failures"]:
                states.add(status["state"])
        assert states == {"failing"}
        assert status["last_error"]["code"] == "expired_on_arrival"
        assert len(fake.token_requests()) >= 2


def test_a_token_url_that_is_not_a_token_endpoint_is_misconfigured() -> None:
    """A 404 from the token URL is shown as endpoint_not_found, state misconfigured, and
    retried only every backoff_max."""
    fake = FakeOAuth2(clients={"app": SECRET}, token_path="/oauth/token")
    with serve_in_thread(fake.app) as url:
        wrong = config(url).replace("/oauth/token", "/oauth/tokens")
        with running_broker(settings_from(wrong)) as client:
            status = wait_for(
                lambda: client.get("/providers").json()["providers"]["idp"]["last_error"]
            )
            state = client.get("/providers").json()["providers"]["idp"]["state"]
            assert (state, status["code"]) == ("misconfigured", "endpoint_not_found")
            response = client.get("/token/idp")
            assert response.status_code == 503
            assert "endpoint_not_found" in response.json()["message"]
            assert len(fake.requests) == 1  # backoff_max is 1 s here; nothing sooner


# -- the fast path answers exactly like the route -----------------------------------------------


@contextmanager
def frozen_broker(fake: FakeOAuth2) -> Iterator[tuple[httpx.Client, TokenFastPath]]:
    """The broker on a clock that does not move, so two answers of one token are identical."""
    with serve_in_thread(fake.app) as url:
        fast = create_app(settings_from(config(url, burst=1)), clock=FakeClock())
        with (
            serve_in_thread(fast, lifespan="on") as base,
            httpx.Client(base_url=base, timeout=10) as client,
        ):
            wait_for(lambda: client.get("/readyz").status_code == 200)
            yield client, fast


def compared(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "server")}
    return response.status_code, headers, response.content


@pytest.mark.parametrize("situation", ["ready", "raw", "degraded", "refresh-failed", "limited"])
def test_fast_path_answers_exactly_like_the_api_route(situation: str) -> None:
    """Same status, headers and bytes from both paths; the fast path served the plain GET
    and not the routed one (fails with the fast path switched off)."""
    fake = FakeOAuth2(clients={"app": SECRET})
    with frozen_broker(fake) as (client, fast):
        accept = {"Accept": "text/plain"} if situation == "raw" else {}
        routed_path = "/token/idp?format=raw" if situation == "raw" else "/token/idp?format=json"
        if situation in ("degraded", "refresh-failed"):
            fake.fail_next(1000, 503, {"error": "temporarily_unavailable"})
            refreshed = client.post("/token/idp/refresh")
            assert refreshed.headers["x-broker-refresh-failed"] == "temporarily_unavailable"
            if situation == "refresh-failed":
                # A forced refresh answered during backoff equals the plain GET.
                during = client.post("/token/idp/refresh")
                assert compared(during) == compared(client.get(routed_path))
        if situation == "limited":
            assert client.post("/token/idp/refresh").status_code == 200
            assert client.post("/token/idp/refresh").status_code == 429
        before = fast.served
        plain = client.get("/token/idp", headers=accept)
        assert fast.served == before + 1
        routed = client.get(routed_path, headers=accept)
        assert fast.served == before + 1
        assert plain.status_code == 200
        assert compared(plain) == compared(routed)
        has_failure = "x-broker-refresh-failed" in plain.headers
        assert has_failure == (situation in ("degraded", "refresh-failed"))
