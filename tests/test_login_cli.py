"""``broker login`` as a person runs it: the CLI process against a running broker (served on
127.0.0.1) and the fake OAuth2 server's real login form, both on real sockets.

* ``--no-browser``: the CLI prints the link; the test, as the person's browser elsewhere,
  signs in and stops at the redirect (that host cannot reach the broker), then pastes the
  address into the CLI, which hands it to the broker.
* ``--refresh-token -``: a refresh token on standard input, checked with one refresh.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from broker.fakes import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.support import BROKER, ROOT, running_broker, settings_from
from tests.test_login import KEY, NAVIGATION, SIGN_IN, form_of

pytestmark = pytest.mark.smoke  # real sockets and a CLI process

CONFIG = """
port: {port}
clients:
  operator:
    key: "{key}"
    providers: ["*"]
    login: true
    status: true
providers:
  code:
    type: oauth2
    grant: authorization_code
    token_url: "{idp}/oauth/token"
    authorize_url: "{idp}/authorize"
    device_authorization_url: "{idp}/device_authorization"
    client_id: app
    client_secret: app-secret
  seeded:
    type: oauth2
    grant: refresh_token
    token_url: "{idp}/oauth/token"
    client_id: app
    client_secret: app-secret
    refresh_token: rt-long-dead-0123456789
"""


def cli(*args: str, stdin: str = "", key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    if key is not None:
        env["BROKER_KEY"] = key
    return subprocess.run(
        [*BROKER, "login", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )


@pytest.fixture
def fake() -> FakeOAuth2:
    return FakeOAuth2(clients={"app": "app-secret"}, users={"alice": "alice-pw"}, ttl=300.0)


def test_no_browser_login_with_the_address_pasted_back(fake: FakeOAuth2) -> None:
    with serve_in_thread(fake.app) as idp:
        port = int(idp.rsplit(":", 1)[1]) + 1  # any port: the broker's base comes from its client
        settings = settings_from(CONFIG.format(port=port, key=KEY, idp=idp))
        with running_broker(settings) as broker:
            base = str(broker.base_url).rstrip("/")
            proc = subprocess.Popen(
                [*BROKER, "login", "code", "--no-browser", "--url", base],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env={**os.environ, "BROKER_KEY": KEY},
            )
            assert proc.stdout is not None
            assert proc.stdin is not None
            lines = [proc.stdout.readline() for _ in range(3)]
            link = lines[1].strip()
            assert "Then paste the address" in lines[2]
            with httpx.Client(headers=NAVIGATION) as browser:
                start = browser.get(link.replace(f"http://127.0.0.1:{port}", base))
                assert start.status_code == 303, start.text
                page = browser.get(start.headers["location"])
                action, hidden = form_of(page.text)
                signed_in = browser.post(f"{idp}{action}", data={**hidden, **SIGN_IN})
                assert signed_in.status_code in (302, 303)
                landed_on = signed_in.headers["location"]  # the browser cannot go further
            out, err = proc.communicate(landed_on + "\n", timeout=30)
            token = broker.get("/token/code", headers={"Authorization": f"Bearer {KEY}"})
    assert proc.returncode == 0, err
    assert "logged in; provider 'code' is ready" in out
    assert token.status_code == 200
    assert fake.is_access_token_valid(token.json()["access_token"])
    assert "code=" not in out + err  # the pasted address is not echoed


def test_a_refresh_token_on_standard_input_makes_the_provider_ready(
    fake: FakeOAuth2, tmp_path: Path
) -> None:
    with serve_in_thread(fake.app) as idp:
        settings = settings_from(CONFIG.format(port=8181, key=KEY, idp=idp))
        with running_broker(settings) as broker:
            base = str(broker.base_url).rstrip("/")
            headers = {"Authorization": f"Bearer {KEY}"}
            broker_before = broker.get("/providers", headers=headers).json()["providers"]["seeded"]
            seed = fake.seed_refresh_token("alice")
            given = ("seeded", "--refresh-token", "-", "--url", base)
            refused = cli(*given, stdin="rt-nonsense-0123456789\n")
            done = cli(*given, stdin=seed + "\n")
            token = broker.get("/token/seeded", headers=headers)
            unkeyed = cli(*given, stdin=seed, key=None)
            # The key from the broker's own config (--config, --client), not the environment.
            config_file = tmp_path / "config.yaml"
            config_file.write_text(CONFIG.format(port=8181, key=KEY, idp=idp))
            again = fake.seed_refresh_token("alice")
            by_config = cli(
                *given, "--config", str(config_file), "--client", "operator", stdin=again, key=None
            )
    assert broker_before["state"] == "needs_login"
    assert broker_before["login"] == "broker login seeded --refresh-token -"
    assert refused.returncode == 1
    assert "login_failed" in refused.stderr
    assert done.returncode == 0, done.stderr
    assert token.status_code == 200
    assert seed not in done.stdout + done.stderr + refused.stderr
    assert unkeyed.returncode == 1
    assert "[unauthorized]" in unkeyed.stderr
    assert by_config.returncode == 0, by_config.stderr


def test_an_unreachable_broker_is_exit_status_4() -> None:
    done = cli("code", "--url", "http://127.0.0.1:9", "--refresh-token", "-", stdin="x\n")
    assert done.returncode == 4
    assert "cannot reach the broker at http://127.0.0.1:9" in done.stderr


def test_a_device_login_waits_for_the_person(fake: FakeOAuth2) -> None:
    fake.device_interval = 1  # real seconds here: poll every second
    with serve_in_thread(fake.app) as idp:
        settings = settings_from(CONFIG.format(port=8181, key=KEY, idp=idp))
        with running_broker(settings) as broker:
            base = str(broker.base_url).rstrip("/")
            proc = subprocess.Popen(
                [*BROKER, "login", "code", "--device", "--url", base, "--timeout", "30"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env={**os.environ, "BROKER_KEY": KEY},
            )
            assert proc.stdout is not None
            first, second = proc.stdout.readline(), proc.stdout.readline()
            assert f"open {idp}/device on any device" in first
            user_code = second.strip().rsplit(" ", 1)[1]
            fake.approve_device(user_code, "alice")
            out, err = proc.communicate(timeout=30)
            token = broker.get("/token/code", headers={"Authorization": f"Bearer {KEY}"})
    assert proc.returncode == 0, err
    assert "logged in; provider 'code' is ready" in out
    assert token.status_code == 200
