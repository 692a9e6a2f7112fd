"""``metrics_listen``: a real ``broker serve`` process with Prometheus' own listener, scraped
without a key, next to the broker's own port, which still asks for what it asks for."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx
import pytest

from broker.fakes import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.support import Running, process, wait_for
from tests.test_cli import busy_port, run
from tests.test_promtool import promtool, promtool_findings

pytestmark = pytest.mark.smoke  # a real process, its sockets and a program

__all__ = ["promtool"]  # the fixture, used by name

APP_KEY = "app-key-7f3a91c0d2e8b5"
MONITOR_KEY = "monitor-key-1b6e4d9a0c73f2"

CONFIG = """\
port: 0
metrics_listen: 127.0.0.1:{metrics}
clients:
  app:
    key: {app}
    providers: [good]
  monitor:
    key: {monitor}
    status: true
providers:
  good:
    type: oauth2
    grant: client_credentials
    token_url: "{idp}/oauth/token"
    client_id: app
    client_secret: app-secret-0123
"""

SERVING = re.compile(r"serving 1 provider\(s\) on (http://127\.0\.0\.1:\d+)")
METRICS = re.compile(r"metrics for Prometheus at (http://127\.0\.0\.1:\d+)/metrics")


def test_the_metrics_listener_serves_metrics_without_a_key(tmp_path: Path, promtool: str) -> None:
    """Port 0 for both (the log names what was bound). The metrics listener answers /metrics
    without a key (promtool finds nothing to say), /healthz, and nothing else: no token,
    even with the key, no status page, no other method, no web page. The broker's own port
    serves tokens as before and its /metrics still needs a client allowed status. SIGTERM
    closes both."""
    fake = FakeOAuth2(clients={"app": "app-secret-0123"}, ttl=300.0)
    config = tmp_path / "config.yaml"
    with serve_in_thread(fake.app) as idp:
        config.write_text(CONFIG.format(metrics=0, app=APP_KEY, monitor=MONITOR_KEY, idp=idp))
        config.chmod(0o600)
        with process("serve", "--config", str(config)) as broker:
            main, metrics = logged(SERVING, broker), logged(METRICS, broker)
            app = {"Authorization": f"Bearer {APP_KEY}"}
            token = wait_for(lambda: served(f"{main}/token/good", app), timeout=30)
            assert token is not None
            assert token.json()["access_token"] == fake.issued_access_tokens[-1]

            scrape = httpx.get(f"{metrics}/metrics", timeout=10)
            assert scrape.status_code == 200
            assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert scrape.headers["cache-control"] == "no-store"
            assert scrape.headers["x-content-type-options"] == "nosniff"
            text = scrape.text
            assert 'broker_tokens_served_total{client="app",provider="good"} 1.0' in text
            assert promtool_findings(promtool, text) == ""
            openmetrics = {"Accept": "application/openmetrics-text; version=1.0.0"}
            negotiated = httpx.get(f"{metrics}/metrics", headers=openmetrics, timeout=10)
            assert negotiated.headers["content-type"].startswith("application/openmetrics-text")
            head = httpx.head(f"{metrics}/metrics", timeout=10)
            assert (head.status_code, head.content) == (200, b"")
            assert httpx.get(f"{metrics}/healthz", timeout=10).json() == {"status": "ok"}

            refused = {
                "token": httpx.get(f"{metrics}/token/good", headers=app, timeout=10),
                "providers": httpx.get(f"{metrics}/providers", timeout=10),
                "post": httpx.post(f"{metrics}/metrics", timeout=10),
                "web page": httpx.get(
                    f"{metrics}/metrics", headers={"Origin": "https://evil.example"}, timeout=10
                ),
                "rebinding": httpx.get(
                    f"{metrics}/metrics", headers={"Host": "evil.example"}, timeout=10
                ),
            }
            assert {what: (a.status_code, a.json()["error"]) for what, a in refused.items()} == {
                "token": (404, "not_found"),
                "providers": (404, "not_found"),
                "post": (405, "method_not_allowed"),
                "web page": (403, "browser_request"),
                "rebinding": (403, "host_not_allowed"),
            }
            assert "access_token" not in refused["token"].text
            after = httpx.get(f"{metrics}/metrics", timeout=10).text
            assert 'broker_caller_denied_total{reason="host_not_allowed"} 1.0' in after
            assert 'broker_caller_denied_total{reason="browser_request"} 1.0' in after

            assert httpx.get(f"{main}/metrics", timeout=10).status_code == 401
            app_metrics = httpx.get(f"{main}/metrics", headers=app, timeout=10)
            assert app_metrics.status_code == 403
            monitor = {"Authorization": f"Bearer {MONITOR_KEY}"}
            assert httpx.get(f"{main}/metrics", headers=monitor, timeout=10).status_code == 200
    port = int(metrics.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


def logged(pattern: re.Pattern[str], broker: Running) -> str:
    """The first group of *pattern* in the broker's log, once it is there."""
    found = wait_for(lambda: pattern.search(broker.output), timeout=30)
    assert found is not None
    return found.group(1)


def served(url: str, headers: dict[str, str]) -> httpx.Response | None:
    answer = httpx.get(url, headers=headers, timeout=10)
    return answer if answer.status_code == 200 else None


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_busy_metrics_port_stops_the_start_with_exit_3(tmp_path: Path, log_format: str) -> None:
    """As a busy port of the broker's own: one line naming metrics_listen, exit 3, nothing
    served."""
    config = tmp_path / "config.yaml"
    with busy_port() as port:
        config.write_text(
            CONFIG.format(metrics=port, app=APP_KEY, monitor=MONITOR_KEY, idp="http://127.0.0.1:9")
        )
        config.chmod(0o600)
        result = run("serve", "--config", str(config), "--log-format", log_format)
    assert result.returncode == 3, result.stderr
    message = (
        f"cannot listen on 127.0.0.1:{port} (metrics_listen): address already in use"
        " (another broker or program is using it; try another metrics_listen port)"
    )
    last = result.stderr.splitlines()[-1]
    if log_format == "text":
        assert last == f"broker: {message}"
    else:
        assert f'"msg": "cannot listen: {message}"' in last
        assert '"event": "listen_error"' in last
    assert "serving" not in result.stderr


def test_check_names_the_metrics_listener(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        CONFIG.format(metrics=9464, app=APP_KEY, monitor=MONITOR_KEY, idp="http://127.0.0.1:9")
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "metrics: http://127.0.0.1:9464/metrics (no client key)\n" in result.stdout
