"""A person's login, end to end through the broker's API: ``grant: authorization_code``
with PKCE against the fake OAuth2 server's real authorize endpoint and login form, the
browser played by an HTTP client that follows what a browser would (its navigations carry
the Sec-Fetch headers a browser sends; cookies kept), the CLI's calls made with the key of a
client that has the ``login`` right.

The broker runs in-process on the fake clock (tests/inprocess.py); the browser reaches the
broker's ASGI app and the fake's directly. A real Chromium does the same in
tests/test_broker_login_browser.py.
"""

from __future__ import annotations

import html
import itertools
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from starlette.types import ASGIApp

from broker.fakes import FakeHiro, FakeHub, FakeOAuth2
from broker.fakes.hub_model import HubService
from tests.inprocess import BROKER_URL, IdPs, InProcess, in_process, process_log
from tests.support import FakeClock, settings_from
from tests.test_replicas import quiet

pytestmark = pytest.mark.anyio

IDP = "http://127.0.0.1:9001"
KEY = "login-key-0123456789abcdef"
CONFIG = """
clients:
  operator:
    key: "{key}"
    providers: [p]
    login: true
  app:
    key: "app-key-0123456789abcdef"
    providers: [p]
providers:
  p:
    type: oauth2
    grant: authorization_code
    token_url: "{idp}/oauth/token"
    authorize_url: "{idp}/authorize"
    client_id: {client}
{extra}"""
NAVIGATION = {
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}
XHR = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}
SIGN_IN = {"username": "alice", "password": "alice-pw", "action": "allow"}
OPERATOR = {"Authorization": f"Bearer {KEY}"}
CORS = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}
APP = {"Authorization": "Bearer app-key-0123456789abcdef"}


class Origins(httpx.AsyncBaseTransport):
    """A browser's network: each origin's ASGI app."""

    def __init__(self, apps: dict[str, ASGIApp]) -> None:
        self._transports = {origin: httpx.ASGITransport(app) for origin, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.netloc.decode()}"
        return await self._transports[origin].handle_async_request(request)


def form_of(page: str) -> tuple[str, dict[str, str]]:
    """The login form's action and its hidden fields."""
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page)[1])  # type: ignore[index]
    hidden = {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    }
    return action, hidden


class Person:
    """Opens the login link, signs in at the fake's form, and follows it back."""

    def __init__(self, broker: InProcess, fake: FakeOAuth2 | FakeHub | FakeHiro) -> None:
        self.browser = httpx.AsyncClient(
            transport=Origins({BROKER_URL: broker.app, IDP: fake.app}), headers=NAVIGATION
        )

    async def sign_in(
        self, link: str, *, username: str = "alice", password: str = "alice-pw", allow: bool = True
    ) -> httpx.Response:
        """Returns the broker's answer to the identity provider's redirect back."""
        start = await self.browser.get(link)
        assert start.status_code == 303, start.text
        page = await self.browser.get(start.headers["location"])
        assert page.status_code == 200, page.text
        action, hidden = form_of(page.text)
        answer = await self.browser.post(
            f"{IDP}{action}" if action.startswith("/") else action,
            data={
                **hidden,
                "username": username,
                "password": password,
                "action": "allow" if allow else "deny",
            },
        )
        assert answer.status_code in (302, 303), answer.text
        back = answer.headers["location"]
        assert back.startswith(f"{BROKER_URL}/login/callback?")
        return await self.browser.get(back)


def setup(
    clock: FakeClock, *, client: str = "app", extra: str = ""
) -> tuple[FakeOAuth2, IdPs, str]:
    fake = FakeOAuth2(
        clients={"app": "app-secret"},
        users={"alice": "alice-pw"},
        ttl=300.0,
        rotate_refresh_tokens=True,
        now=clock.wall,
    )
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    config = CONFIG.format(key=KEY, idp=IDP, client=client, extra=extra)
    return fake, idps, config


SECRET = "    client_secret: app-secret\n"


async def test_a_person_logs_in_once_and_the_provider_is_ready() -> None:
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=SECRET + "    scope: profile\n")
    async with in_process(settings_from(config), idps) as broker:
        before = await broker.client.get("/providers", headers=OPERATOR)
        assert before.status_code == 403  # the login right is not status
        refused = await broker.get("/token/p", headers=APP)
        assert refused.status_code == 503
        assert refused.json()["error"] == "needs_login"

        started = await broker.client.post("/login/p", headers=OPERATOR)
        assert started.status_code == 201, started.text
        body = started.json()
        assert body["url"].startswith(f"{BROKER_URL}/login/start/")
        assert body["redirect_uri"] == f"{BROKER_URL}/login/callback"
        assert body["expires_in"] == 600

        person = Person(broker, fake)
        landed = await person.sign_in(body["url"])
        assert landed.status_code == 200, landed.text
        assert "Logged in" in landed.text
        token = await broker.get("/token/p", headers=APP)
        outcome = await broker.client.get(f"/login/attempts/{body['login']}", headers=OPERATOR)

    assert token.status_code == 200, token.text
    assert fake.is_access_token_valid(token.json()["access_token"])
    assert token.json()["access_token"] not in landed.text  # no token shown to a browser
    assert outcome.json() == {
        "provider": "p",
        "outcome": "ready",
        "message": "logged in; provider 'p' is ready",
    }
    # The authorization request: PKCE S256, our state, the redirect back to the broker.
    (authorize, *_) = fake.authorize_requests()
    query = authorize.query
    assert query["code_challenge_method"] == "S256"
    assert query["redirect_uri"] == f"{BROKER_URL}/login/callback"
    assert query["scope"] == "profile"
    # The exchange: the code with the verifier, Basic client authentication.
    (exchange,) = fake.token_requests("authorization_code")
    assert exchange.form is not None
    assert exchange.form["code_verifier"]
    assert "client_secret" not in exchange.form
    assert exchange.headers["authorization"].startswith("Basic ")


async def test_the_login_link_and_the_callback_work_once() -> None:
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=SECRET)
    async with in_process(settings_from(config), idps) as broker:
        body = (await broker.client.post("/login/p", headers=OPERATOR)).json()
        person = Person(broker, fake)
        landed = await person.sign_in(body["url"])
        assert landed.status_code == 200
        again = await person.browser.get(body["url"])
        replay = await person.browser.get(str(landed.request.url))
    assert again.status_code == 410
    assert "run broker login again" in again.text
    assert replay.status_code in (404, 410)
    assert len(fake.token_requests("authorization_code")) == 1


async def test_a_callback_in_another_browser_is_refused() -> None:
    """Login CSRF: the redirect back, with a valid state and code, reaches a browser that did
    not open the link (a page made it follow the attacker's own login)."""
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=SECRET)
    async with in_process(settings_from(config), idps) as broker:
        body = (await broker.client.post("/login/p", headers=OPERATOR)).json()
        person = Person(broker, fake)
        start = await person.browser.get(body["url"])
        page = await person.browser.get(start.headers["location"])
        action, hidden = form_of(page.text)
        answer = await person.browser.post(
            f"{IDP}{action}",
            data={**hidden, **SIGN_IN},
        )
        victim = Person(broker, fake).browser  # no cookie of this login
        landed = await victim.get(answer.headers["location"])
        refused = await broker.get("/token/p", headers=APP)
    assert landed.status_code == 404
    assert "another browser" in landed.text
    assert refused.status_code == 503
    assert fake.token_requests("authorization_code") == []


async def test_a_denied_login_fails_and_says_why() -> None:
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=SECRET)
    async with in_process(settings_from(config), idps) as broker:
        body = (await broker.client.post("/login/p", headers=OPERATOR)).json()
        landed = await Person(broker, fake).sign_in(body["url"], allow=False)
        outcome = await broker.client.get(f"/login/attempts/{body['login']}", headers=OPERATOR)
    assert landed.status_code == 502
    assert "access_denied" in landed.text
    assert outcome.json()["outcome"] == "failed"
    assert "access_denied" in outcome.json()["message"]


async def test_a_public_client_sends_its_id_and_the_verifier_only() -> None:
    clock = FakeClock()
    fake, idps, config = setup(clock, client="demo-public-client")
    async with in_process(settings_from(config), idps) as broker:
        body = (await broker.client.post("/login/p", headers=OPERATOR)).json()
        landed = await Person(broker, fake).sign_in(body["url"])
        token = await broker.get("/token/p", headers=APP)
    assert landed.status_code == 200, landed.text
    assert token.status_code == 200
    (exchange,) = fake.token_requests("authorization_code")
    assert exchange.form is not None
    assert exchange.form["client_id"] == "demo-public-client"
    assert "authorization" not in exchange.headers


async def test_who_may_start_a_login() -> None:
    clock = FakeClock()
    _, idps, config = setup(clock, extra=SECRET)
    async with in_process(settings_from(config), idps) as broker:
        anonymous = await broker.client.post("/login/p")
        app = await broker.client.post("/login/p", headers=APP)  # token right, no login right
        page = await broker.client.post(
            "/login/p", headers={**OPERATOR, "Origin": "https://evil.example"}
        )
        xhr = await broker.client.get(
            "/login/start/whatever",
            headers=XHR,
        )
        elsewhere = await broker.client.get("/providers", headers={**OPERATOR, **NAVIGATION})
    assert anonymous.status_code == 401
    assert app.status_code == 403
    assert page.json()["error"] == "browser_request"
    assert xhr.json()["error"] == "browser_request"
    assert elsewhere.json()["error"] == "browser_request"


async def test_a_provider_that_logs_in_by_itself_has_no_browser_login() -> None:
    clock = FakeClock()
    _, idps, _ = setup(clock)
    config = f"""
providers:
  p:
    type: oauth2
    grant: client_credentials
    token_url: "{IDP}/oauth/token"
    client_id: app
    client_secret: app-secret
"""
    async with in_process(settings_from(config), idps) as broker:
        answer = await broker.client.post("/login/p")
    assert answer.status_code == 409
    assert answer.json()["error"] == "login_not_supported"


OIDC = """    client_secret: app-secret
    issuer: "http://127.0.0.1:9001"
    scope: openid offline_access
"""


async def test_an_openid_login_discovers_the_endpoints_and_checks_the_id_token() -> None:
    """No authorize_url, no token_url: the issuer's metadata names both."""
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=OIDC)
    config = config.replace(f'    authorize_url: "{IDP}/authorize"\n', "")
    config = config.replace(f'    token_url: "{IDP}/oauth/token"\n', "")
    async with in_process(settings_from(config), idps) as broker:
        body = (await broker.client.post("/login/p", headers=OPERATOR)).json()
        landed = await Person(broker, fake).sign_in(body["url"])
        token = await broker.get("/token/p", headers=APP)
    assert landed.status_code == 200, landed.text
    assert token.status_code == 200
    (authorize, *_) = fake.authorize_requests()
    assert authorize.path == "/authorize"  # from the issuer's metadata
    assert authorize.query["nonce"]
    assert authorize.query["scope"] == "openid offline_access"


async def test_metadata_for_another_issuer_is_refused() -> None:
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=OIDC)
    fake.issuer = "https://elsewhere.example"
    config = config.replace(f'    authorize_url: "{IDP}/authorize"\n', "")
    async with in_process(settings_from(config), idps) as broker:
        answer = await broker.client.post("/login/p", headers=OPERATOR)
    assert answer.status_code == 502
    assert answer.json()["error"] == "login_failed"
    assert "not the configured one" in answer.json()["message"]


OPERATOR_ONLY = """
clients:
  operator:
    key: "{key}"
    providers: [p]
    login: true
providers:
  p:
"""
"""A broker whose one client may log in (and read) provider ``p``, defined after it."""
HUB = (
    OPERATOR_ONLY
    + """    type: hub
    url: "{idp}"
    grant: authorization_code
    client_id: svc
    client_secret: svc-secret
"""
)
HIRO = (
    OPERATOR_ONLY
    + """    type: hiro
    url: "{idp}"
    auth_api: /api/auth/6.6
    flow: code
    client_id: app
    client_secret: app-secret
"""
)


@pytest.mark.parametrize("kind", ["hub", "hiro"])
async def test_hub_and_hiro_6_6_code_flows(kind: str) -> None:
    clock = FakeClock()
    fake: FakeHub | FakeHiro
    if kind == "hub":
        fake = FakeHub(
            services={"svc": HubService(id="svc", secret="svc-secret")},
            users={"alice": "alice-pw"},
            ttl=300.0,
            now=clock.wall,
        )
        config = HUB
    else:
        fake = FakeHiro(
            users={"alice": "alice-pw"},
            clients={"app": "app-secret"},
            auth_version="6.6",
            ttl=300.0,
            now=clock.wall,
        )
        config = HIRO
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    async with in_process(settings_from(config.format(key=KEY, idp=IDP)), idps) as broker:
        body = (await broker.client.post("/login/p", headers=OPERATOR)).json()
        landed = await Person(broker, fake).sign_in(body["url"])
        token = await broker.get("/token/p", headers=OPERATOR)
    assert landed.status_code == 200, landed.text
    assert token.status_code == 200
    assert fake.is_access_token_valid(token.json()["access_token"])
    (authorize, *_) = fake.authorize_requests()
    if kind == "hub":
        assert authorize.path == "/api/rest/oauth2/auth"
        assert authorize.query["access_type"] == "offline"
    else:
        assert authorize.path == "/api/auth/6.6/authorize"
    assert authorize.query["code_challenge_method"] == "S256"
    assert len(fake.token_requests("authorization_code")) == 1


DEVICE = SECRET + f'    device_authorization_url: "{IDP}/device_authorization"\n'


async def device_login(broker: InProcess) -> dict[str, Any]:
    answer = await broker.client.post("/login/p/device", headers=OPERATOR)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def outcome_of(broker: InProcess, login: str) -> str:
    answer = await broker.client.get(f"/login/attempts/{login}", headers=OPERATOR)
    state: str = answer.json()["outcome"]
    return state


async def test_a_device_login_polls_until_the_person_approves() -> None:
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=DEVICE)
    async with in_process(settings_from(config), idps) as broker:
        body = await device_login(broker)
        assert body["verification_uri"] == f"{IDP}/device"
        assert body["interval"] == 5
        await clock.advance(12)  # two polls, both pending
        assert await outcome_of(broker, body["login"]) == "pending"
        fake.approve_device(body["user_code"], "alice")
        await broker.eventually(
            lambda: outcome_of_is(broker, body["login"], "ready"), within=10, step=1
        )
        token = await broker.get("/token/p", headers=APP)
    assert token.status_code == 200
    assert fake.is_access_token_valid(token.json()["access_token"])
    assert len(fake.token_requests("urn:ietf:params:oauth:grant-type:device_code")) == 3
    # At the server's interval, never sooner (on the broker's clock): no slow_down needed.
    sent = idps.times(IDP, "/oauth/token")
    assert [round(b - a) for a, b in itertools.pairwise(sent)] == [5, 5]


async def outcome_of_is(broker: InProcess, login: str, wanted: str) -> bool:
    return await outcome_of(broker, login) == wanted


async def test_a_device_login_slows_down_when_asked() -> None:
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=DEVICE)
    async with in_process(settings_from(config), idps) as broker:
        body = await device_login(broker)
        (grant,) = fake._devices.values()  # the server now wants polls 12 s apart (no switch)
        grant.interval = 12
        await clock.advance(60)
        fake.approve_device(body["user_code"], "alice")
        await broker.eventually(
            lambda: outcome_of_is(broker, body["login"], "ready"), within=60, step=1
        )
    sent = idps.times(IDP, "/oauth/token")
    gaps = [round(b - a) for a, b in itertools.pairwise(sent)]
    # 5 s (the advertised interval) until slow_down, then 5 s more each time it is asked.
    assert gaps[:3] == [5, 10, 15]


@pytest.mark.parametrize("ending", ["deny", "expire"])
async def test_a_device_login_that_is_denied_or_expires_fails(ending: str) -> None:
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=DEVICE)
    fake.device_code_ttl = 30
    async with in_process(settings_from(config), idps) as broker:
        body = await device_login(broker)
        if ending == "deny":
            fake.deny_device(body["user_code"])
        await clock.advance(40)
        answer = await broker.client.get(f"/login/attempts/{body['login']}", headers=OPERATOR)
        refused = await broker.get("/token/p", headers=APP)
    assert answer.json()["outcome"] == "failed"
    assert ("access_denied" if ending == "deny" else "expire") in answer.json()["message"]
    assert refused.status_code == 503


UI = HIRO.replace("flow: code", "flow: ui")


async def test_hiro_ui_flow_hands_the_fragment_over_and_serves_until_expiry() -> None:
    """The browser lands on the broker with the token in the fragment, which it never
    sends; the page's script posts it (done here as the script does: same origin, the
    login's cookie). No refresh token: when the token runs out, a new login is needed."""
    clock = FakeClock()
    fake = FakeHiro(
        users={"alice": "alice-pw"},
        clients={"app": "app-secret"},
        auth_version="6.6",
        ttl=120.0,
        now=clock.wall,
    )
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    async with in_process(settings_from(UI.format(key=KEY, idp=IDP)), idps) as broker:
        body = (await broker.client.post("/login/p", headers=OPERATOR)).json()
        person = Person(broker, fake)
        start = await person.browser.get(body["url"])
        page = await person.browser.get(start.headers["location"])
        assert urlsplit(start.headers["location"]).path == "/api/auth/6.6/ui/"
        action, hidden = form_of(page.text)
        answer = await person.browser.post(f"{IDP}{action}", data={**hidden, **SIGN_IN})
        landed_on = answer.headers["location"]
        callback, _, fragment = landed_on.partition("#")
        landing = await person.browser.get(callback)  # a browser sends no fragment
        token = dict(parse_qsl(fragment))["accessoken"]
        forged = await broker.client.post(
            "/login/fragment",
            json={"accessoken": "forged"},
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        handed = await person.browser.post(
            f"{BROKER_URL}/login/fragment",
            json={"accessoken": token},
            headers={
                "Origin": BROKER_URL,
                "Sec-Fetch-Site": "same-origin",
                "Sec-Fetch-Mode": "cors",
            },
        )
        served = await broker.get("/token/p", headers=OPERATOR)
        await clock.advance(100)
        ready = await broker.client.get("/readyz")
        await clock.advance(30)
        after = await broker.get("/token/p", headers=OPERATOR)
        status = (await broker.client.get("/providers")).status_code
    assert callback == f"{BROKER_URL}/login/callback"
    assert landing.status_code == 200
    policy = landing.headers["content-security-policy"]
    assert "script-src 'nonce-" in policy
    assert "default-src 'none'" in policy
    assert token not in landing.text
    assert forged.json()["error"] == "browser_request"
    assert handed.status_code == 200, handed.text
    assert handed.json()["outcome"] == "ready"
    assert "no refresh token" in handed.json()["message"]
    assert served.json()["access_token"] == token
    assert 100 < served.json()["expires_in"] <= 120
    assert ready.status_code == 200  # ready while the token lasts: nothing to refresh
    assert after.status_code == 503
    assert after.json()["error"] == "needs_login"
    assert status == 401


async def test_codes_verifiers_and_tokens_never_reach_the_broker_log() -> None:
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=SECRET + "    scope: profile\n")
    settings = settings_from(config.replace("clients:", "log_level: debug\nclients:"))
    with process_log(settings) as log:
        async with in_process(settings, idps) as broker:
            body = (await broker.client.post("/login/p", headers=OPERATOR)).json()
            landed = await Person(broker, fake).sign_in(body["url"])
            token = (await broker.get("/token/p", headers=APP)).json()["access_token"]
    assert landed.status_code == 200
    (exchange,) = fake.token_requests("authorization_code")
    assert exchange.form is not None
    (authorize, *_) = fake.authorize_requests()
    secrets_seen = {
        "code": exchange.form["code"],
        "verifier": exchange.form["code_verifier"],
        "state": authorize.query["state"],
        "token": token,
        "refresh token": fake.issued_refresh_tokens[-1],
        "login id": body["login"],
    }
    # The broker's own lines (the test's browser, an httpx client, logs its URLs itself).
    lines = [line for line in log.getvalue().splitlines() if " httpx " not in line]
    assert any("a login was started" in line for line in lines)
    for what, value in secrets_seen.items():
        assert not [line for line in lines if value in line], what


async def test_an_expired_login_link_is_refused() -> None:
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=SECRET)
    async with in_process(settings_from(config), idps) as broker:
        body = (await broker.client.post("/login/p", headers=OPERATOR)).json()
        await clock.advance(601)
        opened = await Person(broker, fake).browser.get(body["url"])
        outcome = await broker.client.get(f"/login/attempts/{body['login']}", headers=OPERATOR)
    assert opened.status_code == 410
    assert "run broker login again" in opened.text
    assert outcome.json()["outcome"] == "failed"
    assert fake.authorize_requests() == []


async def test_the_logins_refresh_token_is_saved_and_resumed_after_a_restart(
    tmp_path: Path,
) -> None:
    """Logged in once, the broker restarts and carries on from the saved refresh token: no
    new login needed."""
    clock = FakeClock()
    fake, idps, config = setup(clock, extra=SECRET)
    settings = settings_from(f"state_dir: {tmp_path}\n" + config)
    async with in_process(settings, idps) as broker:
        body = (await broker.client.post("/login/p", headers=OPERATOR)).json()
        assert (await Person(broker, fake).sign_in(body["url"])).status_code == 200
    async with in_process(settings, idps) as restarted:
        # The state file is read in a thread (real time): let that request end before
        # anything moves the fake clock (tests/test_replicas.py explains quiet).
        await quiet([restarted])
        token = await restarted.get("/token/p", headers=APP)
    assert token.status_code == 200, token.text
    assert len(fake.token_requests("authorization_code")) == 1
    assert len(fake.token_requests("refresh_token")) == 1
