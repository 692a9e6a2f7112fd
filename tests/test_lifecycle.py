"""Restarts, crashes, reloads and shutdowns of a real broker process."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.fakes import hiro
from broker.fakes.hiro import FakeHiro
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.support import free_port, process, ready, running_broker, settings_from, wait_for

pytestmark = pytest.mark.smoke  # real processes, sockets or programs: see pyproject's markers

KEY = "kOFIu2YuBn8d8QnbPqg-hdW3JAAvwuIDkpXIC5fs2o4="  # a Fernet key for tests only


def hiro_config(url: str, state_dir: Path, port: int, extra: str = "") -> str:
    return (
        f"port: {port}\nstate_dir: {state_dir}\nstate_key: {{env: TEST_STATE_KEY}}\n"
        "refresh: {backoff_initial: 0.1, backoff_max: 1}\n"
        f"providers:\n  hiro:\n    type: hiro\n    url: {url}\n"
        f"    client_id: {hiro.DEMO_CLIENT_ID}\n    client_secret: {hiro.DEMO_CLIENT_SECRET}\n"
        f"    username: {hiro.DEMO_USERNAME}\n    password: {hiro.DEMO_PASSWORD}\n{extra}"
    )


ENV = {"TEST_STATE_KEY": KEY}


def test_restart_resumes_from_the_saved_refresh_token(tmp_path: Path) -> None:
    """Unchanged config + restart: one refresh with the saved token, no password login."""
    fake = FakeHiro(ttl=60, rotate_refresh_tokens=True)
    with serve_in_thread(fake.app) as url:
        settings = settings_from(
            f"state_dir: {tmp_path}\nproviders:\n  hiro:\n    type: hiro\n    url: {url}\n"
            f"    client_id: {hiro.DEMO_CLIENT_ID}\n    client_secret: {hiro.DEMO_CLIENT_SECRET}\n"
            f"    username: {hiro.DEMO_USERNAME}\n    password: {hiro.DEMO_PASSWORD}\n"
        )
        with running_broker(settings) as client:
            assert client.get("/token/hiro").status_code == 200
        saved = json.loads((tmp_path / "hiro.json").read_text())
        assert saved["refresh_token"] == fake.issued_refresh_tokens[-1]
        assert oct((tmp_path / "hiro.json").stat().st_mode & 0o777) == "0o600"
        with running_broker(settings) as client:
            token = client.get("/token/hiro").json()["access_token"]
            assert fake.is_access_token_valid(token)
        assert len(fake.token_requests("password")) == 1
        refresh = fake.token_requests("refresh_token")[0].json
        assert isinstance(refresh, dict)
        assert refresh["refresh_token"] == saved["refresh_token"]


def test_encrypted_state_holds_no_readable_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With state_key, the file on disk does not contain the refresh token."""
    fake = FakeHiro(ttl=60)
    monkeypatch.setenv("TEST_STATE_KEY", KEY)
    with serve_in_thread(fake.app) as url:
        settings = settings_from(hiro_config(url, tmp_path, 0))
        with running_broker(settings) as client:
            assert client.get("/token/hiro").status_code == 200
    text = (tmp_path / "hiro.json").read_text()
    assert fake.issued_refresh_tokens[-1] not in text
    assert "encrypted" in json.loads(text)


class KillMidRotation:
    """Lets the fake rotate a refresh token, then SIGKILLs the broker before it hears back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.victim: int | None = None  # pid to kill on the next refresh
        self.killed = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/refresh") or not self.victim:
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.app(scope, receive, hold)  # rotated at the IdP ...
        os.kill(self.victim, signal.SIGKILL)  # ... and the broker dies before the answer
        self.victim = None
        self.killed.set()
        await asyncio.sleep(0)


def test_sigkill_at_any_moment_never_loses_the_login(tmp_path: Path) -> None:
    """20 SIGKILLs during rotation; every restart resumes without a password login.

    Three kinds of moment, at random: right after the broker has a new token
    (the IdP revokes old refresh tokens: the newest must be on disk), while a
    refresh answer is in flight (the IdP has rotated but the broker never
    hears it: it must resume from the refresh token it had, which an IdP
    with a rotation grace period still accepts), and at a random time.
    """
    rng = random.Random(20261125)
    fake = FakeHiro(ttl=2.0, rotate_refresh_tokens=True)
    killer = KillMidRotation(fake.app)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serve_in_thread(killer) as url:
        config = tmp_path / "config.yaml"
        config.write_text(hiro_config(url, tmp_path / "state", port))
        for round_ in range(20):
            mode = rng.choice(["after", "mid", "random"])
            fake.old_refresh_token_valid_after_rotation = mode != "after"
            before = len(fake.token_requests())
            with process("serve", "--config", str(config), env=ENV) as broker:
                wait_for(lambda: ready(base, broker.proc), timeout=30)
                if round_ > 0:
                    resumed = fake.token_requests()[before]
                    assert resumed.path.endswith("/refresh"), f"round {round_}: a new login"
                    assert isinstance(resumed.json, dict)
                    assert resumed.json["refresh_token"] in fake.issued_refresh_tokens[-3:]
                _kill(mode, broker.proc, killer, base, rng)
                broker.proc.wait(timeout=10)
                assert broker.proc.returncode == -signal.SIGKILL
        assert len(fake.token_requests("password")) == 1
        with process("serve", "--config", str(config), env=ENV) as broker:
            wait_for(lambda: ready(base, broker.proc), timeout=30)
            token = httpx.get(f"{base}/token/hiro?format=raw").text
            assert fake.is_access_token_valid(token)
        assert len(fake.token_requests("password")) == 1


def _kill(
    mode: str,
    proc: subprocess.Popen[str],
    killer: KillMidRotation,
    base: str,
    rng: random.Random,
) -> None:
    pid = proc.pid
    if mode == "mid":
        killer.killed.clear()
        killer.victim = pid
        assert killer.killed.wait(timeout=10)
        return
    if mode == "after":
        seen = _refreshes(base)
        wanted = seen + rng.randint(1, 2)
        wait_for(lambda: _refreshes(base) >= wanted, interval=0.005)
    else:
        threading.Event().wait(rng.uniform(0, 1.5))  # the random moment is the test input
    os.kill(pid, signal.SIGKILL)


def _refreshes(base: str) -> int:
    count: int = httpx.get(f"{base}/providers").json()["providers"]["hiro"]["refreshes"]
    return count


def test_sighup_reloads_and_keeps_unchanged_providers(tmp_path: Path) -> None:
    """Unchanged keeps its token, changed restarts, added starts, removed stops, bad is refused."""
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=300)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def provider(name: str, scope: str) -> str:
        return (
            f"  {name}:\n    type: oauth2\n    token_url: {url}/oauth/token\n"
            f"    grant: client_credentials\n    client_id: app\n    client_secret: app-secret\n"
            f"    scope: {scope}\n"
        )

    with serve_in_thread(fake.app) as url:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"port: {port}\nproviders:\n"
            + provider("keep", "a")
            + provider("change", "b")
            + provider("drop", "c")
        )
        with process("serve", "--config", str(config)) as broker:
            wait_for(lambda: ready(base, broker.proc), timeout=30)
            kept = httpx.get(f"{base}/token/keep").json()["access_token"]
            changed = httpx.get(f"{base}/token/change").json()["access_token"]

            config.write_text(
                f"port: {port}\nproviders:\n"
                + provider("keep", "a")
                + provider("change", "b2")
                + provider("new", "d")
            )
            broker.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "new" in httpx.get(f"{base}/providers").json()["providers"])
            wait_for(lambda: ready(base, broker.proc))
            providers = httpx.get(f"{base}/providers").json()["providers"]
            assert set(providers) == {"keep", "change", "new"}
            assert httpx.get(f"{base}/token/keep").json()["access_token"] == kept
            assert providers["keep"]["refreshes"] == 1
            assert httpx.get(f"{base}/token/change").json()["access_token"] != changed
            assert httpx.get(f"{base}/token/drop").status_code == 404

            config.write_text("providers: [this is not a mapping")
            broker.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "config reload rejected" in broker.output)
            assert httpx.get(f"{base}/token/keep").json()["access_token"] == kept
            assert set(httpx.get(f"{base}/providers").json()["providers"]) == {
                "keep",
                "change",
                "new",
            }


class HeldFirstToken:
    """Holds the first login at the IdP until the test releases it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.first = app, True
        self.arrived = threading.Event()
        self.release = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/app") and self.first:
            self.first = False
            self.arrived.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 20)
        await self.app(scope, receive, send)


def test_sigterm_finishes_requests_in_flight_and_exits_0(tmp_path: Path) -> None:
    """A caller waiting for a cold token when SIGTERM arrives still gets it; exit 0, quickly."""
    fake = FakeHiro(ttl=60)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    held = HeldFirstToken(fake.app)
    with serve_in_thread(held) as url:
        config = tmp_path / "config.yaml"
        config.write_text(hiro_config(url, tmp_path / "state", port))
        with process("serve", "--config", str(config), env=ENV) as broker:
            wait_for(lambda: _answers(f"{base}/healthz"), timeout=30)
            assert held.arrived.wait(timeout=10)  # the broker is waiting on the IdP
            # The caller's request, on a socket of its own: sent whole, then read by the
            # broker (its bytes have left the broker's receive queue, so uvicorn has parsed
            # it and started its request) before the signal.
            caller = socket.create_connection(("127.0.0.1", port), timeout=20)
            caller.sendall(
                b"GET /token/hiro HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            wait_for(lambda: _received(port, caller.getsockname()[1]))
            broker.proc.send_signal(signal.SIGTERM)
            held.release.set()
            answer = _read_all(caller)
            assert broker.proc.wait(timeout=10) == 0
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert json.loads(body)["access_token"] == fake.issued_access_tokens[0]


def _received(server_port: int, client_port: int) -> bool:
    """Whether all the caller sent on the connection from *client_port* has reached the
    broker (nothing unacknowledged on the caller's side) and the broker has read it (its
    receive queue is empty), as /proc/net/tcp shows the two ends."""
    ends = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
        tx_queue, rx_queue = (int(n, 16) for n in fields[4].split(":"))
        ends[(local, remote)] = (tx_queue, rx_queue)
    caller = ends.get((client_port, server_port))
    broker = ends.get((server_port, client_port))
    return caller is not None and broker is not None and caller[0] == 0 and broker[1] == 0


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with sock:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
