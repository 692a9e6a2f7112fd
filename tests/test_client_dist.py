"""The client helpers as their own distribution (client/: credential-broker-client).

Apps install it without the broker: httpx is its one dependency, importing it loads nothing
of the broker, and it is released at the broker's version, which the broker pins exactly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import broker.client
import broker_client

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "client"

NOT_FOR_APPS = (
    "broker",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic_core",
    "ruamel",
    "cryptography",
    "prometheus_client",
    "redis",
    "joserfc",
    "swagger_ui_bundle",
    "requests",
)
"""Top-level modules `import broker_client` must not load: the broker and what it alone needs
(and requests, which only BrokerRequestsAuth's callers bring)."""


def project(directory: Path) -> dict[str, Any]:
    with (directory / "pyproject.toml").open("rb") as file:
        table: dict[str, Any] = tomllib.load(file)["project"]
    return table


def requirement_name(requirement: str) -> str:
    """The distribution a PEP 508 requirement names, normalised (PEP 503)."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def test_the_client_depends_on_httpx_alone() -> None:
    client = project(CLIENT)
    assert client["name"] == "credential-broker-client"
    assert [requirement_name(r) for r in client["dependencies"]] == ["httpx"]
    assert {
        extra: [requirement_name(r) for r in requirements]
        for extra, requirements in client["optional-dependencies"].items()
    } == {"requests": ["requests"]}


def test_broker_and_client_have_one_version_and_the_broker_pins_it() -> None:
    server, client = project(ROOT), project(CLIENT)
    assert client["version"] == server["version"] == broker.__version__
    pins = [r for r in server["dependencies"] if requirement_name(r) == client["name"]]
    assert pins == [f"{client['name']}=={client['version']}"]


def test_each_wheel_holds_its_own_packages() -> None:
    """The broker's `packages.find` includes broker*, which would take in a top-level
    broker_client: it lives under client/, whose wheel is broker_client alone."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        include = tomllib.load(file)["tool"]["setuptools"]["packages"]["find"]["include"]
    top_level = [p.parent.name for p in ROOT.glob("*/__init__.py")]
    assert [name for name in top_level if any(fnmatch(name, i) for i in include)] == ["broker"]
    with (CLIENT / "pyproject.toml").open("rb") as file:
        assert tomllib.load(file)["tool"]["setuptools"]["packages"] == ["broker_client"]
    assert [p.parent.name for p in CLIENT.glob("*/__init__.py")] == ["broker_client"]


def test_importing_the_client_loads_nothing_of_the_broker() -> None:
    """`import broker_client` (from client/, as installed alone) loads none of the broker's
    modules or dependencies, and never imports requests (here: it cannot)."""
    code = (
        "import json, sys; sys.modules['requests'] = None; import broker_client; "
        "print(json.dumps([broker_client.__file__, "
        "sorted(m for m, v in sys.modules.items() if v is not None)]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=CLIENT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    origin, modules = json.loads(done.stdout)
    assert Path(origin) == CLIENT / "broker_client" / "__init__.py"
    loaded = {name.partition(".")[0] for name in modules}
    assert {"broker_client", "httpx"} <= loaded
    assert sorted(loaded.intersection(NOT_FOR_APPS)) == []


def test_broker_client_is_the_old_name_of_the_same_helpers() -> None:
    """`from broker.client import BrokerAuth` goes on working where the broker is installed:
    the same objects as broker_client's, every public name of it."""
    old = broker.client
    assert old.__all__ == broker_client.__all__
    assert all(getattr(old, name) is getattr(broker_client, name) for name in old.__all__)
    assert old.unix_socket_path is broker_client.unix_socket_path
