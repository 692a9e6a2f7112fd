"""The broker against the wider world: every fake in every WORLD_MODES mode.

Each (fake, mode) pair runs once (a module-scoped fixture): a fake with 2 s tokens and that
mode's quirks, the broker in front of it, and a caller polling ``GET /token/p`` until the
broker has refreshed twice. Every token served is tried at the fake's protected "me"
endpoint when it is served and again when the broker replaces it (if the fake's clock says
it has not expired yet). The tests then read those observations:

- the broker serves tokens that work, and follows the refresh chain without a new login;
- a token once served keeps working until it expires, so callers may hold on to it, except
  where the identity provider revokes the previous access token on refresh: there a caller
  whose token was killed asks ``POST /token/p/refresh`` with ``If-Match`` and gets the
  current, working token at once, without another request to the identity provider.

The client secret and password contain ``+ % : space``, so ``strict_basic`` tests the
broker's RFC 6749 §2.3.1 encoding, and ``echo_errors`` tests that what a leaky identity
provider echoes back does not leave the broker.

The broker, the caller and the fake run in one event loop on a fake clock
(tests/inprocess.py): the fake dates its tokens by the same clock, so "has it expired yet"
is exact and a run of several token lifetimes takes milliseconds. What the broker logs is
captured as the process writes it (tests.inprocess.process_log: the CLI's log setup, the
lifespan's SecretFilter). One smoke test runs ``broker serve`` as a process on real sockets
in the most hostile world at ``log_level: trace``, so that the process's own stderr and the
HTTP library's records of a real connection stay covered; another checks that ``debug``
leaves those records out.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest

from broker.config.settings import BrokerSettings
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
from tests.inprocess import STEP, IdPs, InProcess, drive, in_process, process_log
from tests.support import FakeClock, free_port, process, ready, settings_from, wait_for

TTL = 2.0
SECRET = "s3cr+t:with %2B/and spaces"
PASSWORD = "pa ss+w%rd:1"
REFRESHES = 2
"""Refresh grants to watch per run: enough to see a rotated token followed twice."""
WATCH_FOR = 15.0
"""Fake seconds a run may take before the broker counts as having stopped refreshing."""

IDP = "http://127.0.0.1:9001"
"""The fake's origin: nothing listens there, IdPs routes by it."""

Clock = Callable[[], float]


@dataclass(frozen=True)
class Setup:
    """One fake, configured to know the broker's credentials, and the broker's YAML for it."""

    name: str
    make: Callable[[WorldQuirks, Clock], FakeProvider]
    """The fake in a world, dating its tokens by a clock (epoch seconds)."""
    yaml: Callable[[FakeProvider], str]
    me_path: str
    client_id: str
    basic: bool  # the broker authenticates the client with Basic here


def _hiro_app(quirks: WorldQuirks, now: Clock) -> FakeProvider:
    return FakeHiro(
        ttl=TTL,
        users={hiro.DEMO_USERNAME: PASSWORD},
        clients={hiro.DEMO_CLIENT_ID: SECRET},
        quirks=quirks,
        now=now,
    )


def _hiro_token(quirks: WorldQuirks, now: Clock) -> FakeProvider:
    return FakeHiro(
        ttl=TTL,
        auth_version="6.6",
        users={hiro.DEMO_USERNAME: PASSWORD},
        clients={hiro.DEMO_CLIENT_ID: SECRET},
        quirks=quirks,
        now=now,
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


def _aerion(quirks: WorldQuirks, now: Clock) -> FakeProvider:
    return FakeAerion(
        ttl=TTL,
        tenants={aerion.DEMO_TENANT: {aerion.DEMO_EMAIL: PASSWORD}},
        quirks=quirks,
        now=now,
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


def _hub(quirks: WorldQuirks, now: Clock) -> FakeProvider:
    service = HubService(hub.DEMO_SERVICE_ID, SECRET)
    return FakeHub(
        ttl=TTL,
        services={hub.DEMO_SERVICE_ID: service},
        users={hub.DEMO_LOGIN: PASSWORD},
        quirks=quirks,
        now=now,
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


def _oauth2(quirks: WorldQuirks, now: Clock) -> FakeProvider:
    return FakeOAuth2(
        ttl=TTL, clients={"app": SECRET}, users={"alice": PASSWORD}, quirks=quirks, now=now
    )


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


def config_text(setup: Setup, fake: FakeProvider, url: str, head: str = "") -> str:
    """The broker's YAML for *fake* at *url*, after *head* (top-level settings)."""
    provider = setup.yaml(fake).replace("{url}", url)
    return head + BROKER_YAML + "".join(f"    {line}\n" for line in provider.strip().splitlines())


def settings_for(setup: Setup, fake: FakeProvider, head: str = "") -> BrokerSettings:
    return parsed(config_text(setup, fake, IDP, head))


@functools.cache
def parsed(text: str) -> BrokerSettings:
    """Parsed once per text: settings are frozen, and each parse ends in a full
    gc.collect() (broker/config/yamlfile.py), most of an in-process run's time."""
    return settings_from(text)


@asynccontextmanager
async def broker_in_front_of(
    idps: IdPs, fake: FakeProvider, settings: BrokerSettings
) -> AsyncIterator[tuple[InProcess, httpx.AsyncClient]]:
    """Route IDP to ``fake`` and start a broker with *settings* on ``idps.clock``; yield
    (the broker, a client for the fake's own API, not through ``idps``)."""
    idps.serve(IDP, fake.app)
    async with (
        in_process(settings, idps) as broker,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url=IDP) as idp,
    ):
        yield broker, idp


async def me_status(idp: httpx.AsyncClient, setup: Setup, token: str) -> int:
    answer = await idp.get(setup.me_path, headers={"Authorization": f"Bearer {token}"})
    return answer.status_code


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
    recoveries: list[tuple[int, int, int, float]] = field(default_factory=list)
    """For each killed token: the If-Match refresh's status, the fake's "me" status for the
    token it gave, how many requests the broker sent the identity provider meanwhile, and
    how many fake seconds it took."""
    refreshes: int = 0
    logins: int = 0
    issued: list[str] = field(default_factory=list)
    """Every access token the fake issued, in order."""


@dataclass
class Caller:
    """A caller of ``GET /token/p`` that tries every token it gets at the fake."""

    setup: Setup
    fake: FakeProvider
    broker: InProcess
    idp: httpx.AsyncClient
    run: Run = field(default_factory=Run)
    etags: list[str] = field(default_factory=list)

    async def poll(self) -> bool:
        """One ``GET /token/p``; False when the broker refused to serve a token."""
        response = await self.broker.get("/token/p")
        if response.status_code != 200:
            self.run.refused = f"{response.status_code} {response.text}"
            return False
        token, etag = response.json()["access_token"], response.json()["etag"]
        run = self.run
        if not run.served or run.served[-1][0] != token:
            if run.served:
                await self._replace(run.served[-1][0], self.etags[-1])
            run.served.append((token, await me_status(self.idp, self.setup, token)))
            self.etags.append(etag)
        return True

    async def _replace(self, token: str, etag: str) -> None:
        status = await me_status(self.idp, self.setup, token)
        expires_at = self.fake.access_token_expires_at(token)
        left = 0.0 if expires_at is None else expires_at - self.fake.now()
        # The fake's clock stands still while "me" answers: a token with time left now had
        # it when "me" saw it, so a refusal is not a token dying of old age.
        if left > 0:
            self.run.replaced.append((token, left, status))
            if status == 401:
                await self._recover(etag)

    async def _recover(self, etag: str) -> None:
        """What a caller whose token the identity provider killed does: If-Match refresh."""
        clock, idps = self.broker.clock, self.broker.idps
        sent, started = len(idps.sent), clock.monotonic()
        answer = await drive(
            clock, self.broker.client.post("/token/p/refresh", headers={"If-Match": etag})
        )
        took = clock.monotonic() - started
        fresh = answer.json().get("access_token", "") if answer.status_code == 200 else ""
        me = await me_status(self.idp, self.setup, fresh)
        self.run.recoveries.append((answer.status_code, me, len(idps.sent) - sent, took))


async def watch(setup: Setup, mode: str) -> Run:
    """Poll the broker every STEP until it has refreshed ``REFRESHES`` times (or refuses
    to serve), and once more to see the last refresh's token."""
    clock = FakeClock()
    idps = IdPs(clock)
    fake = setup.make(WORLD_MODES[mode], clock.wall)
    async with broker_in_front_of(idps, fake, settings_for(setup, fake)) as (broker, idp):
        caller = Caller(setup, fake, broker, idp)
        deadline = clock.monotonic() + WATCH_FOR
        while len(fake.token_requests("refresh_token")) < REFRESHES:
            assert clock.monotonic() < deadline, "the broker stopped refreshing"
            if not await caller.poll():
                break
            await clock.advance(STEP)
        else:
            await caller.poll()
    caller.run.refreshes = len(fake.token_requests("refresh_token"))
    caller.run.logins = len(fake.token_requests("password"))
    caller.run.issued = fake.issued_access_tokens
    return caller.run


MATRIX = [(setup, mode) for setup in SETUPS for mode in WORLD_MODES]


@pytest.fixture(scope="module", params=MATRIX, ids=[f"{s.name}-{m}" for s, m in MATRIX])
def world(request: pytest.FixtureRequest) -> tuple[WorldQuirks, Run]:
    """One run per (fake, mode), read by the three tests below; its own event loop, as
    the tests that read it are plain functions."""
    setup, mode = request.param
    return WORLD_MODES[mode], asyncio.run(watch(setup, mode))


@pytest.fixture
def run(world: tuple[WorldQuirks, Run]) -> Run:
    return world[1]


def test_the_broker_serves_working_tokens_and_follows_the_refresh_chain(run: Run) -> None:
    """Every token served works at the fake; refreshes happen; no second login was needed."""
    assert run.refused is None
    assert [status for _, status in run.served] == [200] * len(run.served)
    assert [token for token, _ in run.served] == run.issued  # none skipped, none foreign
    assert run.refreshes >= REFRESHES
    assert run.logins == 1


def test_a_served_token_keeps_working_until_it_expires(world: tuple[WorldQuirks, Run]) -> None:
    """A caller may keep a token it was given: replacing it must not have killed it, unless
    the identity provider itself revokes the previous token on refresh."""
    quirks, run = world
    assert run.refused is None
    # On the fake clock every replaced token is looked at while it still has time left:
    # the broker replaces tokens before they expire, and no poll comes late.
    assert [token for token, _, _ in run.replaced] == [token for token, _ in run.served[:-1]]
    killed = [(round(left, 2), status) for _, left, status in run.replaced if status != 200]
    if quirks.revoke_previous_access_on_refresh:
        assert killed, "the fake revoked the previous token on refresh"
    else:
        assert killed == []


def test_a_caller_whose_token_was_revoked_recovers_without_idp_traffic(
    world: tuple[WorldQuirks, Run],
) -> None:
    """After a 401 with a revoked token, If-Match gets the current token, which works, at
    once and at no cost to the identity provider (the newer token already exists)."""
    quirks, run = world
    assert len(run.recoveries) == (
        len(run.replaced) if quirks.revoke_previous_access_on_refresh else 0
    )
    assert all(recovery == (200, 200, 0, 0.0) for recovery in run.recoveries), run.recoveries


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


async def answer_when(
    broker: InProcess, path: str, wanted: Callable[[httpx.Response], bool], *, within: float
) -> httpx.Response:
    """Poll ``GET path`` every STEP of fake time until *wanted* holds for the answer."""
    found: list[httpx.Response] = []

    async def holds() -> bool:
        answer = await broker.get(path)
        found.append(answer)
        return wanted(answer)

    await broker.eventually(holds, within=within)
    return found[-1]


def echoed_everywhere(seen: dict[str, str]) -> None:
    """The fake's echo reached every place looked at: the test looks at real leak paths."""
    assert [place for place, text in seen.items() if "request body" not in text] == []


@pytest.fixture(params=SETUPS, ids=[s.name for s in SETUPS])
def setup(request: pytest.FixtureRequest) -> Setup:
    param: Setup = request.param
    return param


LOG_DEBUG = "log_level: debug\n"


@pytest.mark.anyio
async def test_an_echoed_login_error_does_not_leak_credentials(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed logins whose errors quote the request: the 503 every caller of /token gets,
    /providers, /readyz and the log (every record, and the lines the process would write)
    stay free of the secret and password in every spelling sent, and of every piece of 8
    of them."""
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    fake = setup.make(WorldQuirks(echo_credentials_in_errors=True), clock.wall)
    fake.fail_next(100, 400)  # every login for the test's length: the fake's echoing error
    settings = settings_for(setup, fake, LOG_DEBUG)
    with process_log(settings) as log:
        async with broker_in_front_of(IdPs(clock), fake, settings) as (broker, _):
            token_answer = await broker.get("/token/p")
            seen = {
                "503 body": token_answer.text,
                "/providers": (await broker.get("/providers")).text,
                "/readyz": (await broker.get("/readyz")).text,
            }
    seen["log"] = log.getvalue()
    seen["log records"] = caplog.text
    assert token_answer.status_code == 503
    echoed_everywhere(seen)
    assert leaks(seen, credential_spellings(setup)) == {}


@pytest.mark.anyio
async def test_an_echoed_refresh_error_does_not_leak_the_refresh_token(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """Transient refresh failures whose errors quote the request: the refresh token, which
    stays valid and is retried, does not show up, whole or as a piece of 8, in the 503
    callers get once the token has expired, /providers, /readyz or the log."""
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    fake = setup.make(WorldQuirks(echo_credentials_in_errors=True), clock.wall)
    settings = settings_for(setup, fake, LOG_DEBUG)
    with process_log(settings) as log:
        async with broker_in_front_of(IdPs(clock), fake, settings) as (broker, _):
            served = await answer_when(
                broker, "/token/p", lambda a: a.status_code == 200, within=10
            )
            live = fake.issued_refresh_tokens[-1]
            expires_at = fake.access_token_expires_at(served.json()["access_token"])
            assert expires_at is not None
            fake.fail_next(100, 503)  # every refresh fails until the token has expired
            token_answer = await answer_when(
                broker, "/token/p", lambda a: a.status_code == 503, within=10
            )
            # Refused by the token's end on the fake's clock (or the poll that noticed).
            assert clock.wall() <= expires_at + STEP
            seen = {
                "503 body": token_answer.text,
                "/providers": (await broker.get("/providers")).text,
                "/readyz": (await broker.get("/readyz")).text,
            }
    seen["log"] = log.getvalue()
    seen["log records"] = caplog.text
    assert fake.is_refresh_token_valid(live), "the refresh token is live: it must not show"
    assert "refresh failed" in seen["/providers"]
    echoed_everywhere(seen)
    spellings = {**spellings_of("refresh token", live), **credential_spellings(setup)}
    assert leaks(seen, spellings) == {}


def echo_header(spellings: dict[str, str]) -> str:
    """What the fake's first failed login echoes in a header of its answer."""
    return f"{PASSWORD} {quote_plus(SECRET)} {spellings['Basic credentials']}"


def check_process_log(output: str, fake: FakeProvider, spellings: dict[str, str]) -> None:
    """*output* (JSON lines) logged the echoing login and refresh failures, and no spelling
    or piece of the credentials, the refresh tokens or the access tokens."""
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    failures = [r["msg"] for r in records if r.get("event") == "token_request_failed"]
    assert ["login failed" in m and "request body" in m for m in failures[:1]] == [True]
    assert any("refresh failed" in m and "request body" in m for m in failures[1:])
    spellings = dict(spellings)
    for number, token in enumerate(fake.issued_refresh_tokens):
        spellings.update(spellings_of(f"refresh token {number}", token))
    for number, token in enumerate(fake.issued_access_tokens):
        spellings[f"access token {number}"] = token
    assert leaked(output, spellings) == []


ANOTHER_LIBRARY = "tests.another_library"
"""A logger outside the broker's own: the SecretFilter scans its records (not the broker's)."""


@pytest.mark.anyio
async def test_the_broker_logs_no_echoed_secret(setup: Setup) -> None:
    """The process's log path, in-process: the CLI's log setup writing JSON lines at debug
    level, the lifespan's SecretFilter on its handler. A login and a refresh whose errors
    quote the request are logged, with no spelling or piece of the credentials, the refresh
    tokens or the access tokens. The login's answer also echoes them in a header; another
    library's record quoting that header (as httpcore's does on a real connection, see the
    smoke test below) is redacted by the SecretFilter, along with the tokens the broker
    holds by then."""
    clock = FakeClock()
    fake = setup.make(WorldQuirks(echo_credentials_in_errors=True), clock.wall)
    spellings = credential_spellings(setup)
    header = echo_header(spellings)
    fake.fail_next(1, 400, headers={"X-Echo": header})  # the first login fails, echoing
    settings = settings_for(setup, fake, "log_format: json\n" + LOG_DEBUG)
    with process_log(settings) as log:

        def failures_logged() -> int:
            return log.getvalue().count('"token_request_failed"')

        async with broker_in_front_of(IdPs(clock), fake, settings) as (broker, _):

            async def ready() -> bool:
                return (await broker.get("/readyz")).status_code == 200

            async def refresh_failed() -> bool:
                return failures_logged() >= 2

            await broker.eventually(ready, within=30)
            fake.fail_next(1, 503)  # the next refresh fails, echoing the refresh token
            await broker.eventually(refresh_failed, within=30)
            held = [*fake.issued_access_tokens[-1:], *fake.issued_refresh_tokens[-1:]]
            logging.getLogger(ANOTHER_LIBRARY).debug(
                "receive_response_headers.complete return_value=%r",
                [(b"x-echo", header.encode()), (b"x-held", " ".join(held).encode())],
            )
    output = log.getvalue()
    check_process_log(output, fake, spellings)
    other = [json.loads(line)["msg"] for line in output.splitlines() if ANOTHER_LIBRARY in line]
    assert len(other) == 1
    assert "x-echo" in other[0]
    assert "[redacted]" in other[0], "filter applied"


LOG_TRACE = "log_level: trace\n"


@pytest.mark.smoke
def test_a_broker_process_logs_no_echoed_secret_at_trace(tmp_path: Path) -> None:
    """As test_the_broker_logs_no_echoed_secret, with ``broker serve`` as a process on real
    sockets in the most hostile world (FakeOAuth2 honours every switch), at ``trace``: its
    real stderr, with httpcore's record of every step of each real connection (the answers'
    headers among them: the echoing one is another library's record, so the SecretFilter
    is what redacts it), through a failed login, a failed refresh and a refresh that
    succeeds."""
    setup = next(s for s in SETUPS if s.name == "oauth2")
    fake = setup.make(WORLD_MODES["hostile"], time.time)
    spellings = credential_spellings(setup)
    fake.fail_next(1, 400, headers={"X-Echo": echo_header(spellings)})  # the first login fails
    port = free_port()
    with serve_in_thread(fake.app) as url:
        config = tmp_path / "config.yaml"
        config.write_text(
            config_text(setup, fake, url, f"port: {port}\nlog_format: json\n{LOG_TRACE}")
        )
        config.chmod(0o600)
        with process("serve", "--config", str(config)) as broker:
            wait_for(lambda: ready(f"http://127.0.0.1:{port}", broker.proc), timeout=30)
            fake.fail_next(1, 503)  # the next refresh fails, echoing the refresh token
            wait_for(lambda: broker.output.count('"token_request_failed"') >= 2)
            refreshed = broker.output.count('"token_refreshed"')
            wait_for(lambda: broker.output.count('"token_refreshed"') > refreshed)
    check_process_log(broker.output, fake, spellings)
    records = [json.loads(line) for line in broker.output.splitlines() if line.strip()]
    httpcore = [r["msg"] for r in records if r["logger"].startswith("httpcore")]
    assert any(m.startswith("connect_tcp.started") for m in httpcore), "trace shows httpcore"
    assert any(m.startswith("send_request_headers.started") for m in httpcore)
    assert any("x-echo" in m and "[redacted]" in m for m in httpcore), "filter applied"
    connections = [r for r in records if r["logger"] == "uvicorn.error" and r["level"] == "TRACE"]
    assert any("HTTP connection made" in r["msg"] for r in connections), "uvicorn follows"


@pytest.mark.smoke
def test_a_broker_process_at_debug_leaves_httpcore_out(tmp_path: Path) -> None:
    """``log_level: debug``: httpx's line per request is written, httpcore's internals and
    uvicorn's connection lines are not (they are trace's)."""
    setup = next(s for s in SETUPS if s.name == "oauth2")
    fake = setup.make(WORLD_MODES["kind"], time.time)
    port = free_port()
    with serve_in_thread(fake.app) as url:
        config = tmp_path / "config.yaml"
        config.write_text(
            config_text(setup, fake, url, f"port: {port}\nlog_format: json\n{LOG_DEBUG}")
        )
        config.chmod(0o600)
        with process("serve", "--config", str(config)) as broker:
            wait_for(lambda: ready(f"http://127.0.0.1:{port}", broker.proc), timeout=30)
            wait_for(lambda: broker.output.count('"token_refreshed"') >= 2)
    records = [json.loads(line) for line in broker.output.splitlines() if line.strip()]
    assert any(r["logger"] == "httpx" and "HTTP Request: POST" in r["msg"] for r in records)
    assert [r for r in records if r["logger"].startswith("httpcore")] == []
    assert [r for r in records if r["level"] == "TRACE"] == []


# -- a token endpoint that redirects -------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("status", [301, 308])
async def test_a_redirecting_token_endpoint_is_not_followed(status: int) -> None:
    """The broker reports the redirect and never sends its credentials to the new place."""
    clock = FakeClock()
    fake = FakeOAuth2(
        ttl=TTL,
        clients={"app": SECRET},
        users={"alice": PASSWORD},
        redirect_token_path_to="/o/token/",
        redirect_status=status,
        now=clock.wall,
    )
    setup = next(s for s in SETUPS if s.name == "oauth2")
    idps = IdPs(clock)
    async with broker_in_front_of(idps, fake, settings_for(setup, fake)) as (broker, _):
        answer = await broker.get("/token/p")
        error = (await broker.get("/providers")).json()["providers"]["p"]["last_error"]
    assert answer.status_code == 503
    assert error["code"] == "unexpected_redirect"
    assert "/o/token/" in error["message"]
    assert {(r.method, r.path) for r in fake.requests} == {("POST", "/oauth/token")}
    assert {(s.method, s.path) for s in idps.sent} == {("POST", "/oauth/token")}
    assert fake.issued_access_tokens == []
