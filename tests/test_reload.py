"""Config reload in process: a real SIGHUP to this process, the broker served in this loop.

What a reload must change at once (client keys and rights, security, refresh
policy, log level), what it must hold until a restart (compared with the
values in use, command-line overrides included), and what it must refuse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.config.load import load_config
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import FakeServer
from broker.web.app import create_app
from broker.web.fastpath import TokenFastPath
from broker.web.reload import Reloader

pytestmark = pytest.mark.anyio

OLD_KEY = "old-key-0123456789abcdef"
NEW_KEY = "new-key-0123456789abcdef"
STATUS_KEY = "status-key-0123456789abcd"


def config_text(
    url: str,
    *,
    key: str = OLD_KEY,
    providers: str = "[idp]",
    port: int = 8181,
    extra: str = "",
    host: str = "127.0.0.1",
) -> str:
    return f"""
host: {host}
port: {port}
{extra}
clients:
  app:
    key: {key}
    providers: {providers}
  ops:
    key: {STATUS_KEY}
    status: true
providers:
  idp:
    type: oauth2
    token_url: "{url}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret
"""


@dataclass
class Running:
    client: httpx.AsyncClient
    fake: FakeOAuth2
    app: TokenFastPath
    path: Path
    url: str

    @property
    def reloader(self) -> Reloader:
        reloader = self.app.runtime.reloader
        assert reloader is not None
        return reloader

    async def sighup(self, text: str) -> None:
        """Rewrite the file, send this process a real SIGHUP and wait for the reload."""
        self.path.write_text(text)
        before = self.reloader.triggered
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100_000):  # the handler runs on the next loop iterations
            if self.reloader.triggered > before:
                break
            await asyncio.sleep(0)
        assert self.reloader.triggered == before + 1
        await self.reloader.idle()

    async def token(self, key: str) -> httpx.Response:
        return await self.client.get("/token/idp", headers={"Authorization": f"Bearer {key}"})


@asynccontextmanager
async def running(
    tmp_path: Path, overrides: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[Running]:
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=300)
    idp = FakeServer(fake.app)
    url = await idp.start()
    path = tmp_path / "config.yaml"
    path.write_text(config_text(url, **options))
    app = create_app(load_config(path, overrides=overrides), config_path=path, overrides=overrides)
    broker = FakeServer(app, lifespan="on")
    base = await broker.start()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            yield Running(client, fake, app, path, url)
    finally:
        await broker.stop()
        await idp.stop()


async def test_a_rotated_key_works_and_the_old_one_is_refused_at_once(tmp_path: Path) -> None:
    """After the reload is accepted the old key gets 401 and the new one 200, on the fast
    path and the routes alike."""
    async with running(tmp_path) as broker:
        assert (await broker.token(OLD_KEY)).status_code == 200
        await broker.sighup(config_text(broker.url, key=NEW_KEY))
        assert (await broker.token(OLD_KEY)).status_code == 401
        assert (await broker.token(NEW_KEY)).status_code == 200
        refresh = await broker.client.post(
            "/token/idp/refresh", headers={"Authorization": f"Bearer {OLD_KEY}"}
        )
        assert refresh.status_code == 401
        assert len(broker.fake.token_requests()) == 1  # the provider kept its token


async def test_revoked_rights_apply_at_once(tmp_path: Path) -> None:
    """A client whose providers are taken away gets 403 after the reload."""
    async with running(tmp_path) as broker:
        assert (await broker.token(OLD_KEY)).status_code == 200
        await broker.sighup(config_text(broker.url, providers="[]"))
        denied = await broker.token(OLD_KEY)
        assert denied.status_code == 403
        assert denied.json()["error"] == "forbidden"


async def test_security_settings_apply_at_once(tmp_path: Path) -> None:
    """A required header added by a reload is required from then on."""
    async with running(tmp_path) as broker:
        assert (await broker.token(OLD_KEY)).status_code == 200
        header = "security: {require_header: {name: X-Broker-Request, value: 'yes'}}"
        await broker.sighup(config_text(broker.url, extra=header))
        assert (await broker.token(OLD_KEY)).status_code == 412


async def test_docs_are_turned_on_and_off_by_a_reload(tmp_path: Path) -> None:
    """docs: true takes effect with the reload, and so does taking it away."""
    async with running(tmp_path) as broker:
        status = {"Authorization": f"Bearer {STATUS_KEY}"}
        assert (await broker.client.get("/docs", headers=status)).status_code == 404
        await broker.sighup(config_text(broker.url, extra="docs: true"))
        assert (await broker.client.get("/docs", headers=status)).status_code == 200
        await broker.sighup(config_text(broker.url))
        assert (await broker.client.get("/docs", headers=status)).status_code == 404


async def test_refresh_policy_applies_without_a_new_login(tmp_path: Path) -> None:
    """A new caller_burst takes effect; the provider keeps its token (no request)."""
    async with running(tmp_path) as broker:
        first = (await broker.token(OLD_KEY)).json()
        await broker.sighup(config_text(broker.url, extra="refresh: {caller_burst: 1}"))
        assert (await broker.token(OLD_KEY)).json()["access_token"] == first["access_token"]
        auth = {"Authorization": f"Bearer {OLD_KEY}"}
        assert (await broker.client.post("/token/idp/refresh", headers=auth)).status_code == 200
        limited = await broker.client.post("/token/idp/refresh", headers=auth)
        assert limited.status_code == 429
        assert len(broker.fake.token_requests()) == 2


async def test_log_level_applies_at_once(tmp_path: Path) -> None:
    """log_level: warning after a reload turns the audit lines off."""
    async with running(tmp_path, extra="log_level: info") as broker:
        await broker.sighup(config_text(broker.url, extra="log_level: warning"))
        assert logging.getLogger().getEffectiveLevel() == logging.WARNING
        await broker.sighup(config_text(broker.url, extra="log_level: info"))
        assert logging.getLogger().getEffectiveLevel() == logging.INFO


async def test_restart_keys_are_compared_with_the_values_in_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new port in the file is named with both values, and the one in use stays."""
    async with running(tmp_path) as broker:
        caplog.set_level(logging.INFO, logger="broker.reload")
        await broker.sighup(config_text(broker.url))
        assert "takes effect at the next restart" not in caplog.text
        await broker.sighup(config_text(broker.url, port=8282))
        assert "port changed from 8181 to 8282; it takes effect at the next restart" in caplog.text
        assert broker.reloader.in_use.port == 8181


async def test_connection_limits_wait_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server and its connection guard are built once: new limits are named, not used."""
    async with running(tmp_path) as broker:
        caplog.set_level(logging.INFO, logger="broker.reload")
        await broker.sighup(config_text(broker.url, extra="limits: {header_timeout: 2}"))
        assert "limits changed from header_timeout=5.0" in caplog.text
        assert "to header_timeout=2.0" in caplog.text
        assert "it takes effect at the next restart" in caplog.text
        assert broker.reloader.in_use.limits.header_timeout == 5.0


async def test_command_line_overrides_still_win_on_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Started with --port 9999: whatever port the file says, nothing changed (no warning)."""
    async with running(tmp_path, {"port": 9999}) as broker:
        caplog.set_level(logging.INFO, logger="broker.reload")
        await broker.sighup(config_text(broker.url))
        await broker.sighup(config_text(broker.url, port=8282))
        assert "takes effect at the next restart" not in caplog.text
        assert "config reloaded" in caplog.text
        assert broker.reloader.in_use.port == 9999


@pytest.mark.parametrize(
    "listening",
    [
        pytest.param("host: 127.0.0.1\n", id="loopback-host"),
        # listen_tcp: false with no clients would be valid alone; TCP stays on until a restart.
        pytest.param("host: 0.0.0.0\nlisten_tcp: false\nlisten_unix: {sock}\n", id="tcp-off"),
    ],
)
async def test_a_reload_cannot_leave_a_network_broker_without_clients(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, listening: str
) -> None:
    """Listening beyond loopback (the settings say so; the test socket is loopback), a file
    that drops every client and changes the listeners so that it would be valid is refused:
    the listeners in use still apply."""
    network = {"host": "0.0.0.0", "security": {"allowed_hosts": ["127.0.0.1"]}}
    async with running(tmp_path, network) as broker:
        no_clients = listening.format(sock=tmp_path / "b.sock") + (
            f"providers:\n  idp:\n    type: oauth2\n"
            f'    token_url: "{broker.url}/oauth/token"\n    grant: client_credentials\n'
            f"    client_id: app\n    client_secret: app-secret\n"
        )
        caplog.set_level(logging.INFO, logger="broker.reload")
        await broker.sighup(no_clients)
        assert "config reload rejected" in caplog.text
        assert (await broker.client.get("/token/idp")).status_code == 401
        assert (await broker.token(OLD_KEY)).status_code == 200


async def test_a_bad_file_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An invalid file is refused with a log line; the old keys keep working."""
    async with running(tmp_path) as broker:
        caplog.set_level(logging.INFO, logger="broker.reload")
        await broker.sighup("providers: [this is not a mapping")
        assert "config reload rejected" in caplog.text
        (rejected,) = [r for r in caplog.records if "config reload rejected" in r.getMessage()]
        assert "\n" not in rejected.getMessage()  # one record, one line
        assert (await broker.token(OLD_KEY)).status_code == 200


async def test_a_new_unix_socket_waits_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """listen_unix is named as a restart key and no socket appears."""
    sock = tmp_path / "b.sock"
    async with running(tmp_path) as broker:
        caplog.set_level(logging.INFO, logger="broker.reload")
        await broker.sighup(config_text(broker.url, extra=f"listen_unix: {sock}"))
        assert "listen_unix changed from None to path=" in caplog.text
        assert "it takes effect at the next restart" in caplog.text
        assert broker.reloader.in_use.listen_unix is None
        assert not sock.exists()


async def test_a_metrics_listener_waits_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """metrics_listen is named as a restart key, added, moved or removed; the rest of the
    file is applied."""
    async with running(tmp_path, extra="metrics_listen: 127.0.0.1:9464") as broker:
        caplog.set_level(logging.INFO, logger="broker.reload")
        moved = "metrics_listen: {port: 9465}\nrequest_timeout: 3"
        await broker.sighup(config_text(broker.url, extra=moved))
        assert (
            "metrics_listen changed from 127.0.0.1:9464 to 127.0.0.1:9465;"
            " it takes effect at the next restart"
        ) in caplog.text
        assert str(broker.reloader.in_use.metrics_listen) == "127.0.0.1:9464"
        assert broker.reloader.in_use.request_timeout == 3
        await broker.sighup(config_text(broker.url))
        assert "metrics_listen changed from 127.0.0.1:9464 to None" in caplog.text
        assert str(broker.reloader.in_use.metrics_listen) == "127.0.0.1:9464"
