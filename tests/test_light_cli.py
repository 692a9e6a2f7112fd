"""``broker health``, ``broker wait`` and ``broker token``: CLI processes against a broker on a
real socket (and against nothing), with the shapes a shell expects; and they load no web
framework."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from broker.fakes import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.support import BROKER, ROOT, running_broker, settings_from

pytestmark = pytest.mark.smoke  # CLI processes and real sockets

KEY = "shell-key-0123456789abcdef"
CONFIG = """
clients:
  shell:
    key: "{key}"
    providers: [p, later]
    status: true
providers:
  p:
    type: oauth2
    grant: client_credentials
    token_url: "{idp}/oauth/token"
    client_id: app
    client_secret: app-secret
  later:
    type: oauth2
    grant: authorization_code
    token_url: "{idp}/oauth/token"
    authorize_url: "{idp}/authorize"
    client_id: app
"""
UNREACHABLE = "http://127.0.0.1:9"


def broker(*args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    if key is not None:
        env["BROKER_KEY"] = key
    return subprocess.run(
        [*BROKER, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env, check=False
    )


def test_health_wait_and_token_against_a_running_broker() -> None:
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=300.0)
    with (
        serve_in_thread(fake.app) as idp,
        running_broker(settings_from(CONFIG.format(key=KEY, idp=idp))) as client,
    ):
        url = str(client.base_url).rstrip("/")
        alive = broker("health", "--url", url)
        not_ready = broker("health", "--ready", "--url", url)  # "later" needs a login
        waited = broker("wait", "--ready", "--timeout", "1", "--url", url)
        raw = broker("token", "p", "--url", url)
        header = broker("token", "p", "--header", "--url", url)
        env = broker("token", "p", "--env", "--name", "API_TOKEN", "--url", url)
        refused = broker("token", "p", "--url", url, key=None)
        needs_login = broker("token", "later", "--url", url)
    token = fake.issued_access_tokens[-1]
    assert alive.returncode == 0, alive.stderr
    assert not_ready.returncode == 1
    assert "not ready: later" in not_ready.stderr
    assert waited.returncode == 1
    assert "not ready after 1 s" in waited.stderr
    assert url in waited.stderr
    assert (raw.returncode, raw.stdout) == (0, f"{token}\n")
    assert header.stdout == f"Authorization: Bearer {token}\n"
    lines = env.stdout.splitlines()
    assert lines[0] == f"export API_TOKEN={token}"
    assert lines[1].startswith("export API_TOKEN_EXPIRES_AT=")
    assert refused.returncode == 1
    assert "[unauthorized]" in refused.stderr
    assert needs_login.returncode == 1
    assert "[needs_login]" in needs_login.stderr
    for done in (alive, not_ready, waited, raw, refused, needs_login):
        assert "Traceback" not in done.stderr


def test_against_nothing_they_say_so_without_a_traceback() -> None:
    for args in (("health",), ("wait", "--timeout", "0.5"), ("token", "p")):
        done = broker(*args, "--url", UNREACHABLE)
        assert "Traceback" not in done.stderr
        assert done.returncode == (1 if args[0] == "wait" else 4), done.stderr
        assert "127.0.0.1:9" in done.stderr
    usage = broker("token", "p", "--env", "--name", "not a name", "--url", UNREACHABLE)
    assert usage.returncode == 2


def test_the_probes_load_no_web_framework() -> None:
    script = (
        "import sys; from broker.entry import main; main(['health', '--url', '"
        + UNREACHABLE
        + "']); print(sorted(m for m in ('fastapi', 'uvicorn', 'httpx', 'pydantic', 'broker.web')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
