"""``broker demo``: the broker plus local fake HIRO, Aerion and Hub servers in one process.

Nothing leaves the machine and no account is needed: the fakes from
:mod:`broker.fakes` speak each provider's real wire protocol on 127.0.0.1,
and the broker is configured against them exactly as it would be against the
real services (the config is printed at start).
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from broker.config.load import parse_config
from broker.config.settings import BrokerSettings
from broker.fakes import aerion, hiro, hub
from broker.fakes.server import FakeServer
from broker.ops.logs import capture_python_reports, configure_logging
from broker.server.connguard import ConnectionGate, connection_gate
from broker.server.listeners import close_all, listen, listen_address, port_of
from broker.server.uvicorn import exit_zero_after_shutdown, uvicorn_config

DEMO_CONFIG = """\
# The demo's config: the same keys you would write for the real services.
refresh:
  margin: 5          # short demo tokens: refresh at least 5 s before expiry
providers:
  hiro:
    type: hiro
    url: {hiro_url}
    client_id: {hiro_client_id}
    client_secret: {hiro_client_secret}
    username: {hiro_username}
    password: {hiro_password}
  aerion:
    type: aerion
    url: {aerion_url}
    company_url: https://acme.aerion.app
    client_id: {aerion_client_id}
    username: {aerion_username}
    password: {aerion_password}
  hub:
    type: hub
    url: {hub_url}
    client_id: {hub_service_id}
    client_secret: {hub_service_secret}
    scope: 0-0-0-0-0
"""


def run_demo(*, host: str, port: int, ttl: float) -> int:
    """Run until Ctrl+C or SIGTERM; returns the exit code.

    The broker's port is bound first: when it is busy, ListenError says so in
    one line before any fake has started or anything was announced.
    """
    configure_logging("info")
    capture_python_reports()
    # --host and --port pass the config's checks before anything is bound.
    placeholders = {name: "http://127.0.0.1:9" for name in ("hiro", "aerion", "hub")}
    checked = parse_config(
        demo_config(placeholders), source="demo config", overrides={"host": host, "port": port}
    )
    gate = connection_gate(checked)  # the demo's limits are the defaults
    sockets = gate.listeners(listen(host, port))
    try:
        with exit_zero_after_shutdown():
            asyncio.run(_demo(sockets, host, ttl, gate))
    finally:
        close_all(sockets)
    return 0


async def _demo(sockets: list[socket.socket], host: str, ttl: float, gate: ConnectionGate) -> None:
    fakes = {
        "hiro": hiro.FakeHiro(ttl=ttl),
        "aerion": aerion.FakeAerion(ttl=ttl),
        "hub": hub.FakeHub(ttl=ttl),
    }
    servers = {name: FakeServer(fake.app) for name, fake in fakes.items()}
    try:
        urls = {name: await server.start() for name, server in servers.items()}
        config_text = demo_config(urls)
        settings = parse_config(
            config_text, source="demo config", overrides={"host": host, "port": port_of(sockets)}
        )
        _print_banner(settings, urls, config_text)
        await uvicorn.Server(uvicorn_config(settings, gate=gate)).serve(sockets=sockets)
    finally:
        for fake_server in servers.values():
            await fake_server.stop()


def demo_config(urls: dict[str, str]) -> str:
    """The demo's YAML, pointing at fakes listening on *urls* (name → base URL)."""
    return DEMO_CONFIG.format(
        hiro_url=urls["hiro"],
        hiro_client_id=hiro.DEMO_CLIENT_ID,
        hiro_client_secret=hiro.DEMO_CLIENT_SECRET,
        hiro_username=hiro.DEMO_USERNAME,
        hiro_password=hiro.DEMO_PASSWORD,
        aerion_url=urls["aerion"],
        aerion_client_id=aerion.DEMO_CLIENT_ID,
        aerion_username=aerion.DEMO_EMAIL,
        aerion_password=aerion.DEMO_PASSWORD,
        hub_url=urls["hub"],
        hub_service_id=hub.DEMO_SERVICE_ID,
        hub_service_secret=hub.DEMO_SERVICE_SECRET,
    )


def _print_banner(settings: BrokerSettings, urls: dict[str, str], config_text: str) -> None:
    base = f"http://{listen_address(settings.host)}:{settings.port}"
    me = {
        "hiro": f"{urls['hiro']}/api/auth/6/me/account",
        "aerion": f"{urls['aerion']}/v1/users/me",
        "hub": f"{urls['hub']}/api/rest/services/me",
    }
    lines = [
        "",
        "broker demo: fake identity providers on 127.0.0.1 (no account, nothing leaves the host)",
        *(f"  {name:<7} {url}" for name, url in urls.items()),
        "",
        config_text,
        f"broker: serving on {base}  (Ctrl+C stops everything)",
        "",
        "Try:",
        f"  curl -s {base}/token/hiro",
        f"  curl -s -H 'Accept: text/plain' {base}/token/aerion",
        f"  curl -s '{base}/token/hub?min_valid=30'",
        f"  curl -s {base}/providers",
        "  # use a token against the fake HIRO's 'me' endpoint:",
        f"  curl -s -H \"Authorization: Bearer $(curl -s '{base}/token/hiro?format=raw')\""
        f" {me['hiro']}",
        "",
    ]
    print("\n".join(lines), flush=True)
