"""``broker health``, ``broker wait`` and ``broker token``: CLI processes against a broker on a
real socket (and against nothing), with the shapes a shell expects; and they load no web
framework."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.fakes import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.support import (
    BROKER,
    ROOT,
    free_port,
    process,
    running_broker,
    settings_from,
    wait_for,
)

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


def broker(
    *args: str, key: str | None = KEY, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")} | (env or {})
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
        assert done.returncode == (4 if args[0] == "token" else 1), done.stderr
        assert "did not answer" in done.stderr or "not up after" in done.stderr
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


def test_the_probes_find_a_broker_on_another_port_through_its_address_file(
    tmp_path: Path,
) -> None:
    """A broker with ``address_file`` (set, as the image does, by BROKER_ADDRESS_FILE) writes
    its loopback URL once it listens; ``broker health`` and ``token`` with only that variable
    reach it on its port, and the file is gone once the broker has stopped."""
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=300.0)
    address = tmp_path / "address.json"
    with serve_in_thread(fake.app) as idp:
        config = tmp_path / "config.yaml"
        port = free_port()
        config.write_text(f"host: 0.0.0.0\nport: {port}\n" + CONFIG.format(key=KEY, idp=idp))
        with process("serve", "--config", str(config), env={"BROKER_ADDRESS_FILE": str(address)}):
            wait_for(address.exists, timeout=30)
            written = json.loads(address.read_text())
            health = broker("health", "--ready", env={"BROKER_ADDRESS_FILE": str(address)})
            token = broker("token", "p", env={"BROKER_ADDRESS_FILE": str(address)})
        gone = not address.exists()
    assert written["url"] == f"http://127.0.0.1:{port}"  # loopback, though listening on any
    assert written["pid"] > 0
    assert gone
    assert health.returncode == 1, health.stderr  # reached: "later" is not ready
    assert "not ready: later" in health.stderr
    assert (token.returncode, token.stdout) == (0, f"{fake.issued_access_tokens[-1]}\n")


def test_an_address_file_that_cannot_be_written_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"port: {free_port()}\n" + CONFIG.format(key=KEY, idp=UNREACHABLE))
    missing = tmp_path / "no-such-dir" / "address.json"
    done = broker("serve", "--config", str(config), env={"BROKER_ADDRESS_FILE": str(missing)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-2:] == [
        "broker: address file error",
        f"address_file {missing}: cannot write it: No such file or directory",
    ]
    assert "Traceback" not in done.stderr
    as_json = broker(
        "serve",
        "--config",
        str(config),
        "--log-format",
        "json",
        env={"BROKER_ADDRESS_FILE": str(missing)},
    )
    assert as_json.returncode == 2, as_json.stderr
    record = json.loads(as_json.stderr.strip().splitlines()[-1])
    assert record["event"] == "address_file_error"
    assert str(missing) in record["msg"]
