"""``metrics_listen``'s settings, and which requests :class:`MetricsPort` answers: those
accepted on a metrics socket, told by the address they arrived at (in-process, no sockets;
tests/test_metrics_listen.py runs a real one)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from starlette.types import Message

from broker.core.errors import ConfigError
from broker.ops.metrics import Metrics
from broker.web.metrics_port import LocalAddress, MetricsPort
from broker.web.security import Guard
from tests.support import settings_from

PROVIDERS = (
    "providers:\n  hub:\n    type: hub\n    url: http://127.0.0.1:9\n"
    "    client_id: c\n    client_secret: s3cret-s3cret\n"
)


@pytest.mark.parametrize(
    ("written", "host", "port"),
    [
        ("127.0.0.1:9464", "127.0.0.1", 9464),
        ("9465", "127.0.0.1", 9465),
        ("'[::1]:9466'", "::1", 9466),
        ("localhost:0", "localhost", 0),
        ("{port: 9467}", "127.0.0.1", 9467),
        ("{}", "127.0.0.1", 9464),
        ("{host: 0.0.0.0, port: 9468, allow_unauthenticated_network: true}", "0.0.0.0", 9468),
    ],
)
def test_metrics_listen_is_host_and_port(written: str, host: str, port: int) -> None:
    listen = settings_from(f"metrics_listen: {written}\n" + PROVIDERS).metrics_listen
    assert listen is not None
    assert (listen.host, listen.port) == (host, port)


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        (
            "0.0.0.0:9464",
            "test.yaml:1: metrics_listen.host: 0.0.0.0 is reachable from other machines, and"
            " metrics there need no key; set metrics_listen.allow_unauthenticated_network:"
            " true to mean it",
        ),
        ("'::1:9464'", "test.yaml:1: metrics_listen: an IPv6 address goes in brackets"),
        (":9464", "test.yaml:1: metrics_listen: must be host:port (127.0.0.1:9464), a port"),
        ("127.0.0.1:99999", "metrics_listen.port: Input should be less than or equal to 65535"),
        (
            "127.0.0.1:8181",
            "test.yaml:1: metrics_listen: the broker's own host and port; give the metrics a"
            " port of their own",
        ),
    ],
)
def test_metrics_listen_problems(written: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from(f"metrics_listen: {written}\n" + PROVIDERS)
    assert problem in str(raised.value)


def test_the_environment_sets_metrics_listen_by_its_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """BROKER_METRICS_LISTEN__PORT starts the block the file leaves out (host: loopback)."""
    monkeypatch.setenv("BROKER_METRICS_LISTEN__PORT", "9470")
    listen = settings_from(PROVIDERS).metrics_listen
    assert str(listen) == "127.0.0.1:9470"


class Inner:
    """The broker's app behind the port: records what reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def port_for(listening: list[LocalAddress], metrics_listen: str) -> tuple[MetricsPort, Inner]:
    settings = settings_from(f"metrics_listen: {metrics_listen}\n" + PROVIDERS)
    inner = Inner()
    port = MetricsPort(
        inner, listening=listening, settings=settings, guard=Guard(settings), metrics=Metrics()
    )
    return port, inner


async def status_of(port: MetricsPort, server: Any, path: str = "/metrics", host: str = "") -> int:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    headers = [(b"host", (host or f"{server[0]}:{server[1]}").encode())] if server else []
    scope = {"type": "http", "method": "GET", "path": path, "headers": headers, "server": server}
    await port(scope, receive, send)
    status: int = sent[0]["status"]
    return status


@pytest.mark.anyio
async def test_requests_are_told_apart_by_the_address_they_arrived_at() -> None:
    """A metrics socket on 127.0.0.1:9464: requests there are answered by the port (200),
    the broker's own port and its Unix socket by the broker (299), even at a port number
    the metrics listener has on another address."""
    port, inner = port_for([(socket.AF_INET, "127.0.0.1", 9464)], "127.0.0.1:9464")
    assert await status_of(port, ("127.0.0.1", 9464)) == 200
    assert await status_of(port, ("127.0.0.1", 9464), "/token/hub") == 404
    assert await status_of(port, ("127.0.0.1", 8181)) == 299
    assert await status_of(port, ("127.0.0.2", 9464)) == 299  # another loopback address
    assert await status_of(port, ("/run/broker.sock", None)) == 299
    assert await status_of(port, None) == 299
    assert inner.paths == ["/metrics"] * 4


@pytest.mark.anyio
async def test_a_wildcard_listener_takes_its_port_in_its_family() -> None:
    """On 0.0.0.0:9464 a request arrives at the interface's address: any IPv4 address at
    that port is the metrics listener's (nothing else can listen there), IPv6 is not; its
    Host is whatever address the scraper used."""
    port, _ = port_for(
        [(socket.AF_INET, "0.0.0.0", 9464)],
        "{host: 0.0.0.0, port: 9464, allow_unauthenticated_network: true}",
    )
    assert await status_of(port, ("10.1.2.3", 9464)) == 200
    assert await status_of(port, ("127.0.0.1", 9464), host="10.1.2.3:9464") == 200
    assert await status_of(port, ("::1", 9464)) == 299
    six, _ = port_for(
        [(socket.AF_INET6, "::", 9464)],
        "{host: '::', port: 9464, allow_unauthenticated_network: true}",
    )
    assert await status_of(six, ("fd00::5", 9464)) == 200
    assert await status_of(six, ("10.1.2.3", 9464)) == 299


@pytest.mark.anyio
async def test_a_loopback_listener_checks_the_host_header() -> None:
    port, _ = port_for([(socket.AF_INET, "127.0.0.1", 9464)], "127.0.0.1:9464")
    assert await status_of(port, ("127.0.0.1", 9464), host="localhost:9464") == 200
    assert await status_of(port, ("127.0.0.1", 9464), host="rebound.example:9464") == 403
