"""The broker against the wider world: every fake in every WORLD_MODES mode, over HTTP.

Each (fake, mode) pair runs once (a module-scoped fixture): a fake on 127.0.0.1 with 2 s
tokens and that mode's quirks, the broker in front of it, and a caller polling
``GET /token/p`` until the broker has refreshed twice. Every token served is tried at the
fake's protected "me" endpoint when it is served and again when the broker replaces it (if
the fake's clock says it has not expired yet). The tests then read those observations:

- the broker serves tokens that work, and follows the refresh chain without a new login;
- a token once served keeps working until it expires, so callers may hold on to it, except
  where the identity provider revokes the previous access token on refresh: there a caller
  whose token was killed asks ``POST /token/p/refresh`` with ``If-Match`` and gets the
  current, working token at once, without another request to the identity provider.

The client secret and password contain ``+ % : space``, so ``strict_basic`` tests the
broker's RFC 6749 §2.3.1 encoding, and ``echo_errors`` tests that what a leaky identity
provider echoes back does not leave the broker.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest

from broker.fakes import (
    WORLD_MODES,
    FakeAerion,
    FakeHiro,
    FakeHub,
    FakeOAuth2,
    FakeProvider,
    HubService,
    WorldQuirks,
    aerion,
    hiro,
    hub,
)
from broker.fakes.server import serve_in_thread
from tests.support import free_port, process, ready, running_broker, settings_from, wait_for

TTL = 2.0
SECRET = "s3cr+t:with %2B/and spaces"
PASSWORD = "pa ss+w%rd:1"
REFRESHES = 2
"""Refresh grants to watch per run: enough to see a rotated token followed twice."""


@dataclass(frozen=True)
class Setup:
    """One fake, configured to know the broker's credentials, and the broker's YAML for it."""

    name: str
    make: Callable[[WorldQuirks], FakeProvider]
    yaml: Callable[[FakeProvider], str]
    me_path: str
    client_id: str
    basic: bool  # the broker authenticates the client with Basic here


def _hiro_app(quirks: WorldQuirks) -> FakeProvider:
    return FakeHiro(
        ttl=TTL,
        users={hiro.DEMO_USERNAME: PASSWORD},
        clients={hiro.DEMO_CLIENT_ID: SECRET},
        quirks=quirks,
    )


def _hiro_token(quirks: WorldQuirks) -> FakeProvider:
    return FakeHiro(
        ttl=TTL,
        auth_version="6.6",
        users={hiro.DEMO_USERNAME: PASSWORD},
        clients={hiro.DEMO_CLIENT_ID: SECRET},
        quirks=quirks,
    )


def _hiro_yaml(fake: FakeProvider) -> str:
    return f"""
type: hiro
url: "{{url}}"
client_id: {hiro.DEMO_CLIENT_ID}
client_secret: "{SECRET}"
username: {hiro.DEMO_USERNAME}
password: "{PASSWORD}"
"""


def _hiro_token_yaml(fake: FakeProvider) -> str:
    return (
        _hiro_yaml(fake)
        + "flow: token\nauth_api: /api/auth/6.6\nclient_auth: client_secret_basic\n"
    )


def _aerion(quirks: WorldQuirks) -> FakeProvider:
    return FakeAerion(
        ttl=TTL, tenants={aerion.DEMO_TENANT: {aerion.DEMO_EMAIL: PASSWORD}}, quirks=quirks
    )


def _aerion_yaml(fake: FakeProvider) -> str:
    return f"""
type: aerion
url: "{{url}}"
company_url: https://acme.aerion.app
client_id: {aerion.DEMO_CLIENT_ID}
client_secret: "{SECRET}"
username: {aerion.DEMO_EMAIL}
password: "{PASSWORD}"
"""


def _hub(quirks: WorldQuirks) -> FakeProvider:
    service = HubService(hub.DEMO_SERVICE_ID, SECRET)
    return FakeHub(
        ttl=TTL,
        services={hub.DEMO_SERVICE_ID: service},
        users={hub.DEMO_LOGIN: PASSWORD},
        quirks=quirks,
    )


def _hub_yaml(fake: FakeProvider) -> str:
    return f"""
type: hub
url: "{{url}}"
client_id: {hub.DEMO_SERVICE_ID}
client_secret: "{SECRET}"
scope: 0-0-0-0-0
username: {hub.DEMO_LOGIN}
password: "{PASSWORD}"
"""


def _oauth2(quirks: WorldQuirks) -> FakeProvider:
    return FakeOAuth2(ttl=TTL, clients={"app": SECRET}, users={"alice": PASSWORD}, quirks=quirks)


def _oauth2_yaml(fake: FakeProvider) -> str:
    assert isinstance(fake, FakeOAuth2)
    # The token URL as the fake serves it: /oauth/token/ under trailing_slash and hostile.
    return f"""
type: oauth2
token_url: "{{url}}{fake.served_token_path}"
client_id: app
client_secret: "{SECRET}"
grant: password
username: alice
password: "{PASSWORD}"
"""


SETUPS = [
    Setup("hiro-app", _hiro_app, _hiro_yaml, "/api/auth/6/me/account", hiro.DEMO_CLIENT_ID, False),
    Setup(
        "hiro-token-basic",
        _hiro_token,
        _hiro_token_yaml,
        "/api/auth/6.6/me/account",
        hiro.DEMO_CLIENT_ID,
        True,
    ),
    Setup("aerion", _aerion, _aerion_yaml, "/v1/users/me", aerion.DEMO_CLIENT_ID, False),
    Setup("hub", _hub, _hub_yaml, "/api/rest/users/me", hub.DEMO_SERVICE_ID, True),
    Setup("oauth2", _oauth2, _oauth2_yaml, "/userinfo", "app", True),
]

BROKER_YAML = "refresh: {backoff_initial: 0.2, backoff_max: 1}\nproviders:\n  p:\n"


@contextmanager
def broker_in_front_of(
    setup: Setup, fake: FakeProvider
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Serve ``fake`` and a broker for it; yield (broker client, client for the fake)."""
    with serve_in_thread(fake.app) as url:
        provider = setup.yaml(fake).replace("{url}", url)
        text = BROKER_YAML + "".join(f"    {line}\n" for line in provider.strip().splitlines())
        with (
            running_broker(settings_from(text)) as broker,
            httpx.Client(base_url=url, timeout=5) as idp,
        ):
            yield broker, idp


def me_status(idp: httpx.Client, setup: Setup, token: str) -> int:
    return idp.get(setup.me_path, headers={"Authorization": f"Bearer {token}"}).status_code


@dataclass
class Run:
    """What one caller saw in one world."""

    served: list[tuple[str, int]] = field(default_factory=list)
    """Each distinct token served and the fake's "me" status for it when it was served."""
    replaced: list[tuple[str, float, int]] = field(default_factory=list)
    """Tokens the broker replaced while the fake still dated them alive: (token, seconds they
    had left by the fake's clock, the fake's "me" status for them at that moment)."""
    refused: str | None = None
    """The broker's answer when it served no token (status and body)."""
    recoveries: list[tuple[int, int, int]] = field(default_factory=list)
    """For each killed token: the If-Match refresh's status, the fake's "me" status for the
    token it gave, and how many token requests the fake got meanwhile."""
    refreshes: int = 0
    logins: int = 0


def _replace(
    run: Run,
    fake: FakeProvider,
    idp: httpx.Client,
    broker: httpx.Client,
    setup: Setup,
    old: tuple[str, str],
) -> None:
    token, etag = old
    status = me_status(idp, setup, token)
    expires_at = fake.access_token_expires_at(token)
    left = 0.0 if expires_at is None else expires_at - fake.now()
    # Measured after the call: a token still unexpired now was unexpired when "me" saw it,
    # so a refusal then is not a token dying of old age.
    if left > 0:
        run.replaced.append((token, left, status))
        if status == 401:
            _recover(run, fake, idp, broker, setup, etag)


def _recover(
    run: Run, fake: FakeProvider, idp: httpx.Client, broker: httpx.Client, setup: Setup, etag: str
) -> None:
    """What a caller whose token the identity provider killed does: If-Match refresh."""
    before = len(fake.token_requests())
    answer = broker.post("/token/p/refresh", headers={"If-Match": etag})
    fresh = answer.json().get("access_token", "") if answer.status_code == 200 else ""
    run.recoveries.append(
        (answer.status_code, me_status(idp, setup, fresh), len(fake.token_requests()) - before)
    )


def watch(setup: Setup, mode: str) -> Run:
    """Poll the broker until it has refreshed ``REFRESHES`` times (or refuses to serve)."""
    fake = setup.make(WORLD_MODES[mode])
    run = Run()
    etags: list[str] = []
    with broker_in_front_of(setup, fake) as (broker, idp):
        deadline = time.monotonic() + 15
        while len(fake.token_requests("refresh_token")) < REFRESHES:
            assert time.monotonic() < deadline, "the broker stopped refreshing"
            response = broker.get("/token/p")
            if response.status_code != 200:
                run.refused = f"{response.status_code} {response.text}"
                break
            token, etag = response.json()["access_token"], response.json()["etag"]
            if not run.served or run.served[-1][0] != token:
                if run.served:
                    _replace(run, fake, idp, broker, setup, (run.served[-1][0], etags[-1]))
                run.served.append((token, me_status(idp, setup, token)))
                etags.append(etag)
            time.sleep(0.05)
    run.refreshes = len(fake.token_requests("refresh_token"))
    run.logins = len(fake.token_requests("password"))
    return run


MATRIX = [(setup, mode) for setup in SETUPS for mode in WORLD_MODES]


@pytest.fixture(scope="module", params=MATRIX, ids=[f"{s.name}-{m}" for s, m in MATRIX])
def world(request: pytest.FixtureRequest) -> tuple[WorldQuirks, Run]:
    setup, mode = request.param
    return WORLD_MODES[mode], watch(setup, mode)


@pytest.fixture
def run(world: tuple[WorldQuirks, Run]) -> Run:
    return world[1]


def test_the_broker_serves_working_tokens_and_follows_the_refresh_chain(run: Run) -> None:
    """Every token served works at the fake; refreshes happen; no second login was needed."""
    assert run.refused is None
    assert [status for _, status in run.served] == [200] * len(run.served)
    assert run.refreshes >= REFRESHES
    assert run.logins == 1


def test_a_served_token_keeps_working_until_it_expires(world: tuple[WorldQuirks, Run]) -> None:
    """A caller may keep a token it was given: replacing it must not have killed it, unless
    the identity provider itself revokes the previous token on refresh."""
    quirks, run = world
    assert run.refused is None
    killed = [(round(left, 2), status) for _, left, status in run.replaced if status != 200]
    if quirks.revoke_previous_access_on_refresh:
        assert killed, "the fake revoked the previous token on refresh"
    else:
        assert killed == []


def test_a_caller_whose_token_was_revoked_recovers_without_idp_traffic(
    world: tuple[WorldQuirks, Run],
) -> None:
    """After a 401 with a revoked token, If-Match gets the current token, which works, and
    costs the identity provider nothing (the newer token already exists)."""
    quirks, run = world
    assert len(run.recoveries) == (
        len(run.replaced) if quirks.revoke_previous_access_on_refresh else 0
    )
    assert all(recovery == (200, 200, 0) for recovery in run.recoveries), run.recoveries


# -- leaks -------------------------------------------------------------------------------


PIECE = 8
"""A piece of a secret this long must not show either (an identity provider's truncation
of what it echoes, or ours, must not leave a recognisable prefix)."""


def spellings_of(name: str, value: str) -> dict[str, str]:
    """*value* raw, percent- and form-encoded, and every piece of PIECE of each, by name."""
    whole = {
        name: value,
        f"form-encoded {name}": quote_plus(value),
        f"percent-encoded {name}": quote(value),
        f"percent-encoded {name} (/ too)": quote(value, safe=""),
    }
    pieces = {
        f"{spelling} [{at}:{at + PIECE}]": text[at : at + PIECE]
        for spelling, text in whole.items()
        for at in range(len(text) - PIECE + 1)
    }
    return {**whole, **pieces}


def credential_spellings(setup: Setup) -> dict[str, str]:
    """Every form in which the broker sends its credentials, and the usual re-encodings of
    them, by name: raw, form- and percent-encoded, every piece of 8 of those, and the Basic
    credentials in both base64 alphabets, with and without padding, with the id and secret
    form-encoded (RFC 6749) or verbatim."""
    spellings = {**spellings_of("secret", SECRET), **spellings_of("password", PASSWORD)}
    for how, basic in (
        ("", f"{quote_plus(setup.client_id)}:{quote_plus(SECRET)}"),
        (" (verbatim)", f"{setup.client_id}:{SECRET}"),
    ):
        for alphabet, encode in (("", base64.b64encode), (" URL-safe", base64.urlsafe_b64encode)):
            encoded = encode(basic.encode()).decode()
            spellings[f"Basic credentials{how}{alphabet}"] = encoded
            spellings[f"Basic credentials{how}{alphabet}, no padding"] = encoded.rstrip("=")
    return spellings


def leaked(text: str, spellings: dict[str, str]) -> list[str]:
    return [name for name, value in spellings.items() if value in text]


def leaks(seen: dict[str, str], spellings: dict[str, str]) -> dict[str, list[str]]:
    """For each place that leaked (the 503 body, /providers, the log...), what it showed."""
    return {place: found for place, text in seen.items() if (found := leaked(text, spellings))}


def refused(answer: httpx.Response) -> httpx.Response | None:
    return answer if answer.status_code == 503 else None


def echoed_everywhere(seen: dict[str, str]) -> None:
    """The fake's echo reached every place looked at: the test looks at real leak paths."""
    assert [place for place, text in seen.items() if "request body" not in text] == []


@pytest.fixture(params=SETUPS, ids=[s.name for s in SETUPS])
def setup(request: pytest.FixtureRequest) -> Setup:
    param: Setup = request.param
    return param


def test_an_echoed_login_error_does_not_leak_credentials(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed logins whose errors quote the request: the 503 every caller of /token gets,
    /providers, /readyz and the log stay free of the secret and password in every spelling
    sent, and of every piece of 8 of them."""
    caplog.set_level(logging.DEBUG)
    fake = setup.make(WorldQuirks(echo_credentials_in_errors=True))
    fake.fail_next(100, 400)  # every login for the test's length: the fake's echoing error
    with broker_in_front_of(setup, fake) as (broker, _):
        token_answer = broker.get("/token/p")
        seen = {
            "503 body": token_answer.text,
            "/providers": broker.get("/providers").text,
            "/readyz": broker.get("/readyz").text,
            "log": caplog.text,
        }
    assert token_answer.status_code == 503
    echoed_everywhere(seen)
    assert leaks(seen, credential_spellings(setup)) == {}


def test_an_echoed_refresh_error_does_not_leak_the_refresh_token(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """Transient refresh failures whose errors quote the request: the refresh token, which
    stays valid and is retried, does not show up, whole or as a piece of 8, in the 503
    callers get once the token has expired, /providers, /readyz or the log."""
    caplog.set_level(logging.DEBUG)
    fake = setup.make(WorldQuirks(echo_credentials_in_errors=True))
    with broker_in_front_of(setup, fake) as (broker, _):
        wait_for(lambda: broker.get("/token/p").status_code == 200)
        live = fake.issued_refresh_tokens[-1]
        fake.fail_next(100, 503)  # every refresh fails until the token has expired
        token_answer = wait_for(lambda: refused(broker.get("/token/p")))
        assert token_answer is not None
        seen = {
            "503 body": token_answer.text,
            "/providers": broker.get("/providers").text,
            "/readyz": broker.get("/readyz").text,
            "log": caplog.text,
        }
    assert "refresh failed" in seen["/providers"]
    echoed_everywhere(seen)
    spellings = {**spellings_of("refresh token", live), **credential_spellings(setup)}
    assert leaks(seen, spellings) == {}


def test_a_broker_process_logs_no_echoed_secret(setup: Setup, tmp_path: Path) -> None:
    """The real log path: ``broker serve`` writing JSON lines at debug level, its SecretFilter
    on the handler. A login and a refresh whose errors quote the request are logged, with no
    spelling or piece of the credentials, the refresh tokens or the access tokens. The login's
    answer also echoes them in a header, which httpcore logs at debug level: that record is
    another library's, so the SecretFilter is what redacts it."""
    fake = setup.make(WorldQuirks(echo_credentials_in_errors=True))
    spellings = credential_spellings(setup)
    header = f"{PASSWORD} {quote_plus(SECRET)} {spellings['Basic credentials']}"
    fake.fail_next(1, 400, headers={"X-Echo": header})  # the first login fails, echoing
    port = free_port()
    with serve_in_thread(fake.app) as url:
        provider = setup.yaml(fake).replace("{url}", url)
        config = tmp_path / "config.yaml"
        config.write_text(
            f"port: {port}\nlog_format: json\nlog_level: debug\n"
            + BROKER_YAML
            + "".join(f"    {line}\n" for line in provider.strip().splitlines())
        )
        config.chmod(0o600)
        with process("serve", "--config", str(config)) as broker:
            wait_for(lambda: ready(f"http://127.0.0.1:{port}", broker.proc), timeout=30)
            fake.fail_next(1, 503)  # the next refresh fails, echoing the refresh token
            wait_for(lambda: broker.output.count('"token_request_failed"') >= 2)
    records = [json.loads(line) for line in broker.output.splitlines() if line.strip()]
    failures = [r["msg"] for r in records if r.get("event") == "token_request_failed"]
    assert ["login failed" in m and "request body" in m for m in failures[:1]] == [True]
    assert any("refresh failed" in m and "request body" in m for m in failures[1:])
    for number, token in enumerate(fake.issued_refresh_tokens):
        spellings.update(spellings_of(f"refresh token {number}", token))
    for number, token in enumerate(fake.issued_access_tokens):
        spellings[f"access token {number}"] = token
    assert leaked(broker.output, spellings) == []
    headers_logged = [r["msg"] for r in records if r["logger"].startswith("httpcore")]
    assert any("x-echo" in m and "[redacted]" in m for m in headers_logged), "filter applied"


# -- a token endpoint that redirects -------------------------------------------------------


@pytest.mark.parametrize("status", [301, 308])
def test_a_redirecting_token_endpoint_is_not_followed(status: int) -> None:
    """The broker reports the redirect and never sends its credentials to the new place."""
    fake = FakeOAuth2(
        ttl=TTL,
        clients={"app": SECRET},
        users={"alice": PASSWORD},
        redirect_token_path_to="/o/token/",
        redirect_status=status,
    )
    setup = next(s for s in SETUPS if s.name == "oauth2")
    with broker_in_front_of(setup, fake) as (broker, _):
        answer = broker.get("/token/p")
        error = broker.get("/providers").json()["providers"]["p"]["last_error"]
    assert answer.status_code == 503
    assert error["code"] == "unexpected_redirect"
    assert "/o/token/" in error["message"]
    assert {(r.method, r.path) for r in fake.requests} == {("POST", "/oauth/token")}
    assert fake.issued_access_tokens == []
