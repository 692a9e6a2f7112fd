"""The ``broker`` command as users run it: check, serve and demo, as real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from broker.fakes import hiro
from broker.fakes.hiro import FakeHiro
from broker.fakes.server import serve_in_thread
from tests.support import BROKER, ROOT, free_port, process, ready, wait_for

pytestmark = pytest.mark.smoke  # real processes, sockets or programs: see pyproject's markers


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BROKER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        check=False,
    )


def test_check_accepts_the_example_config(tmp_path: Path) -> None:
    """config.example.yaml is valid (so it cannot rot) and check explains each provider.

    Its directories (state_dir, the sink's) are moved under tmp_path: check tries them.
    """
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "hub_service_secret").write_text("s3cret-hub\n")
    (secrets_dir / "monitoring_key").write_text("monitoring-key-0123456789\n")
    example = (ROOT / "config.example.yaml").read_text()
    for directory in ("/var/lib/broker/", "/run/broker/"):
        assert directory in example
        example = example.replace(directory, f"{tmp_path}{directory}")
    (tmp_path / "run" / "broker").mkdir(parents=True)
    config = tmp_path / "config.yaml"
    config.write_text(example.replace("/run/secrets/", f"{secrets_dir}/"))
    env = {name: f"value-of-{name.lower()}" for name in re.findall(r"\{env: ([A-Z_]+)\}", example)}
    env["BROKER_STATE_KEY"] = Fernet.generate_key().decode()  # the state directory checks it
    result = run("check", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert "OK, 6 provider(s)" in result.stdout
    assert "hiro: password login as service-user@example.com" in result.stdout
    assert "aerion: password grant" in result.stdout
    assert "hub: client_credentials grant" in result.stdout
    for secret in [*env.values(), "s3cret-hub"]:
        assert secret not in result.stdout


def test_check_rejects_a_bad_config_naming_file_key_and_problem(tmp_path: Path) -> None:
    """Exit 2 and one line per problem; the secret value is never echoed."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        "providers:\n"
        "  hiro:\n"
        "    type: hiro\n"
        "    url: not-a-url\n"
        "    client_id: c\n"
        "    client_secret: {env: BROKER_TEST_UNSET_VAR}\n"
        "    username: u\n"
        "    password: [hunter2-secret]\n"
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:4: providers.hiro.url: must be an http:// or https:// URL" in result.stderr
    assert (
        f"{config}:6: providers.hiro.client_secret: environment variable"
        " BROKER_TEST_UNSET_VAR is not set"
    ) in result.stderr
    assert f"{config}:8: providers.hiro.password:" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def minimal_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        "providers:\n  hub:\n    type: hub\n    url: http://127.0.0.1:9\n"
        "    client_id: svc\n    client_secret: s3cret\n"
    )
    return config


def test_serve_refuses_a_network_host_without_clients(tmp_path: Path) -> None:
    """--host 0.0.0.0 is validated like host: in the file: no clients, no start."""
    args = ("serve", "--config", str(minimal_config(tmp_path)), "--port", str(free_port()))
    result = run(*args, "--host", "0.0.0.0")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "broker: configuration error\n"
        "command line: --host: 0.0.0.0 is reachable from other machines; configure clients"
        " (each with its own key) or, knowingly, set security.allow_unauthenticated_network:"
        " true\n"
    )


def test_serve_refuses_a_port_out_of_range(tmp_path: Path) -> None:
    """--port 99999 is a configuration error naming the option."""
    result = run("serve", "--config", str(minimal_config(tmp_path)), "--port", "99999")
    assert result.returncode == 2
    assert result.stderr == (
        "broker: configuration error\n"
        "command line: --port: Input should be less than or equal to 65535\n"
    )


def test_demo_validates_its_port() -> None:
    """The demo's --host/--port go through the same validation."""
    result = run("demo", "--port", "99999")
    assert result.returncode == 2
    assert "command line: --port: Input should be less than or equal to 65535" in result.stderr


def test_bad_environment_override_names_the_variable(tmp_path: Path) -> None:
    """BROKER_PORT=abc is reported against the variable, not against the config file."""
    config = minimal_config(tmp_path)
    result = run("check", "--config", str(config), env={"BROKER_PORT": "abc"})
    assert result.returncode == 2
    assert result.stderr == (
        "broker: configuration error\n"
        "environment: BROKER_PORT: Input should be a valid integer, unable to parse string"
        " as an integer\n"
    )


def test_deprecated_key_is_a_warning_not_an_error(tmp_path: Path) -> None:
    """An old config with refresh.force_cooldown still checks OK, with one warning."""
    config = minimal_config(tmp_path)
    config.write_text("refresh:\n  force_cooldown: 5\n" + config.read_text())
    result = run("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert (
        f"{config}:2: refresh.force_cooldown: no longer used, ignored: forced refreshes now use"
        " If-Match (see README); remove the key"
    ) in result.stderr
    assert result.stderr.count("force_cooldown") == 1


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    """serve with a config that does not exist exits 2 and names the file."""
    result = run("serve", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml: cannot read config file" in result.stderr


def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    """broker serve: ready, serves the fake's token, exits 0 on SIGTERM."""
    fake = FakeHiro(ttl=60)
    port = free_port()
    with serve_in_thread(fake.app) as url:
        config = tmp_path / "config.yaml"
        config.write_text(
            "providers:\n  hiro:\n    type: hiro\n"
            f"    url: {url}\n    client_id: {hiro.DEMO_CLIENT_ID}\n"
            f"    client_secret: {{env: TEST_HIRO_SECRET}}\n"
            f"    username: {hiro.DEMO_USERNAME}\n    password: {{env: TEST_HIRO_PASSWORD}}\n"
        )
        env = {
            "TEST_HIRO_SECRET": hiro.DEMO_CLIENT_SECRET,
            "TEST_HIRO_PASSWORD": hiro.DEMO_PASSWORD,
        }
        args = ("serve", "--config", str(config), "--port", str(port))
        with process(*args, env=env) as broker:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: ready(base, broker.proc), timeout=30)
            token = httpx.get(f"{base}/token/hiro?format=raw").text
            assert fake.issued_access_tokens == [token]
        assert "serving 1 provider(s)" in broker.output
        assert hiro.DEMO_PASSWORD not in broker.output
        assert token not in broker.output


def test_demo_serves_real_tokens_from_local_fakes() -> None:
    """broker demo: three fake IdPs, tokens for each, and a token the fake accepts."""
    port = free_port()
    with process("demo", "--port", str(port), "--ttl", "30") as demo:
        wait_for(lambda: "broker: serving on" in demo.output, timeout=30)
        banner = demo.output
        hiro_url = re.search(r"^\s+hiro\s+(http://127\.0\.0\.1:\d+)$", banner, re.M)
        assert hiro_url is not None, banner
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: ready(base, demo.proc), timeout=30)
        for name in ("hiro", "aerion", "hub"):
            assert httpx.get(f"{base}/token/{name}").status_code == 200
        token = httpx.get(f"{base}/token/hiro", params={"format": "raw"}).text
        me = httpx.get(
            f"{hiro_url.group(1)}/api/auth/6/me/account",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert me.status_code == 200
        assert me.json()["ogit/name"] == hiro.DEMO_USERNAME


@contextmanager
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another program is listening on."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        port: int = other.getsockname()[1]
        yield port


def busy_port_message(port: int) -> str:
    return (
        f"broker: cannot listen on 127.0.0.1:{port}: address already in use"
        f" (another broker or program is using it; try --port {port + 101})"
    )


def test_demo_on_a_busy_port_says_so_in_one_line_before_anything_else() -> None:
    """No banner, no fakes started and stopped, no traceback: one line and exit 3."""
    with busy_port() as port:
        result = run("demo", "--port", str(port))
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [busy_port_message(port)]


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "log_level: warning\nproviders:\n  hub:\n    type: hub\n"
        "    url: https://hub.example.com\n    client_id: c\n    client_secret: {env: HOME}\n"
    )
    with busy_port() as port:
        result = run("serve", "--config", str(config), "--port", str(port))
    assert result.returncode == 3, result.stdout + result.stderr  # 3: the port is in use
    assert result.stderr.splitlines()[-1] == busy_port_message(port)
    assert "Traceback" not in result.stderr
    assert "serving" not in result.stderr


def test_output_closed_early_ends_quietly(tmp_path: Path) -> None:
    """`broker check | head -1`: the reader goes away mid-output; exit 1, no traceback.

    The output (~250 KB) is far more than a pipe holds, so the broker is still
    writing when the pipe closes.
    """
    providers = "".join(
        f"  p{i}:\n    type: hub\n    url: https://hub.example.com\n"
        "    client_id: c\n    client_secret: {env: HOME}\n"
        for i in range(1000)
    )
    config = tmp_path / "config.yaml"
    config.write_text(f"providers:\n{providers}")
    proc = subprocess.Popen(
        [*BROKER, "check", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        assert proc.stdout.readline() == f"{config}: OK, 1000 provider(s)\n"
        proc.stdout.close()
        assert proc.wait(timeout=60) == 1
        assert proc.stderr.read() == ""
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def test_broker_config_names_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.yaml"
    config.write_text(
        "providers:\n  hub:\n    type: hub\n    url: https://hub.example.com\n"
        "    client_id: c\n    client_secret: {env: HOME}\n"
    )
    found = run("check", env={"BROKER_CONFIG": str(config)})
    missing = run("check", env={"BROKER_CONFIG": str(tmp_path / "nothing.yaml")})
    assert found.returncode == 0, found.stderr
    assert "hub" in found.stdout
    assert missing.returncode == 2
    assert "nothing.yaml" in missing.stderr


def test_log_flags_override_the_config(tmp_path: Path) -> None:
    """--log-format json and --log-level warning win over the file's text and info."""
    fake = FakeHiro()
    with serve_in_thread(fake.app) as idp:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"log_level: info\nlog_format: text\nport: {free_port()}\nproviders:\n  hiro:\n"
            f"    type: hiro\n    url: {idp}\n    client_id: {hiro.DEMO_CLIENT_ID}\n"
            f"    client_secret: {{env: HIRO_SECRET}}\n    username: {hiro.DEMO_USERNAME}\n"
            "    password: {env: HIRO_PASSWORD}\n"
        )
        config.chmod(0o600)
        env = {"HIRO_SECRET": hiro.DEMO_CLIENT_SECRET, "HIRO_PASSWORD": hiro.DEMO_PASSWORD}
        with process(
            "serve",
            "--config",
            str(config),
            "--log-format",
            "json",
            "--log-level",
            "warning",
            env=env,
        ) as broker:
            wait_for(lambda: fake.token_requests(), timeout=30)
            broker.proc.send_signal(2)
            broker.proc.wait(timeout=15)
    lines = [line for line in broker.output.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), lines
    assert not [line for line in lines if '"level": "INFO"' in line or '"level":"INFO"' in line]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_config_error_at_start_is_a_json_line_when_asked(tmp_path: Path, how: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("port: 99999\nproviders: {}\n")
    flags = ("--log-format", "json") if how == "flag" else ()
    env = {"BROKER_LOG_FORMAT": "json"} if how == "env" else {}
    result = run("serve", "--config", str(config), *flags, env=env)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    record = json.loads(line)
    assert (record["level"], record["event"]) == ("ERROR", "config_error")
    assert record["msg"].startswith(f"configuration error: {config}")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"port: \xff\xfe\n", "not UTF-8 text (byte 6 cannot be decoded)"),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "not valid YAML: nested too deeply"),
    ],
    ids=["not-utf8", "too-deep"],
)
def test_a_file_the_parser_cannot_take_is_a_configuration_error(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """Exit 2 and the problem, in text or as one JSON record: never a traceback."""
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    text = run("serve", "--config", str(config))
    assert text.returncode == 2, text.stderr
    assert text.stderr == f"broker: configuration error\n{config}: {problem}\n"
    as_json = run("serve", "--config", str(config), "--log-format", "json")
    assert as_json.returncode == 2, as_json.stderr
    (line,) = as_json.stderr.splitlines()
    assert json.loads(line)["msg"] == f"configuration error: {config}: {problem}"


def test_a_start_failure_after_the_config_is_read_follows_its_log_format(tmp_path: Path) -> None:
    """log_format: json in the file (no flag): the deprecated key's warning, made while the
    file is read, and the state directory error are JSON records like every other line."""
    not_a_directory = tmp_path / "state"
    not_a_directory.write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"log_format: json\nstate_dir: {not_a_directory}\nrefresh: {{force_cooldown: 5}}\n"
        "providers:\n  hub:\n    type: hub\n    url: https://hub.example.com\n"
        "    client_id: c\n    client_secret: {env: HOME}\n"
    )
    result = run("serve", "--config", str(config))
    assert result.returncode == 2, result.stderr
    warning, error = (json.loads(line) for line in result.stderr.splitlines())
    assert (warning["level"], warning["logger"]) == ("WARNING", "broker.config")
    assert "force_cooldown: no longer used" in warning["msg"]
    assert (error["level"], error["event"]) == ("ERROR", "state_dir_error")
    assert error["msg"].startswith(f"state directory error: state directory {not_a_directory}")


@contextmanager
def short_dir() -> Iterator[Path]:
    """A directory whose socket paths fit a sun_path (tmp_path's may not)."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="brk") as name:
        yield Path(name)


def test_the_serving_line_comes_once_every_listener_is_bound(tmp_path: Path) -> None:
    """Read stderr line by line: the moment "serving ..." is there, a connection to the TCP
    port and to the Unix socket succeeds (they are bound and listening; uvicorn accepts
    them once it has started), and each is answered. That the line never comes first
    shows in the next test: a listener that cannot be had stops the start before any
    "serving" line."""
    port = free_port()
    with short_dir() as directory:
        path = directory / "broker.sock"
        config = tmp_path / "config.yaml"
        config.write_text(f"port: {port}\nlisten_unix: {path}\n" + HUB_PROVIDER)
        proc = subprocess.Popen(
            [*BROKER, "serve", "--config", str(config)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        watchdog = threading.Timer(60, proc.kill)  # a hung test must not hang CI
        watchdog.start()
        assert proc.stderr is not None
        try:
            seen = []
            for line in proc.stderr:
                seen.append(line)
                if " serving " in line:
                    with socket.create_connection(("127.0.0.1", port), timeout=5):
                        pass
                    with socket.socket(socket.AF_UNIX) as unix:
                        unix.connect(str(path))
                    break
            assert any(" serving " in line for line in seen), seen
            assert (
                seen[-1]
                .rstrip()
                .endswith(f"serving 1 provider(s) on http://127.0.0.1:{port} and unix:{path}")
            )
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
            over_unix = httpx.HTTPTransport(uds=str(path))
            with httpx.Client(transport=over_unix, timeout=10) as client:
                assert client.get("http://localhost/healthz").status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            watchdog.cancel()
            proc.kill()
            proc.wait()
            proc.stderr.close()


@pytest.mark.parametrize("busy", ["tcp", "unix"])
def test_a_listener_that_cannot_be_had_stops_the_start_before_serving(
    tmp_path: Path, busy: str
) -> None:
    """At log_level info: the port or socket in use is the last line, and no "serving"
    line came before it (every listener is bound before the broker says it serves)."""
    with short_dir() as directory, busy_port() as port:
        path = directory / "broker.sock"
        config = tmp_path / "config.yaml"
        own_port = port if busy == "tcp" else free_port()
        config.write_text(f"port: {own_port}\nlisten_unix: {path}\n" + HUB_PROVIDER)
        with socket.socket(socket.AF_UNIX) as other:
            if busy == "unix":
                other.bind(str(path))
                other.listen()
            result = run("serve", "--config", str(config))
    assert result.returncode == (3 if busy == "tcp" else 2), result.stderr
    assert result.stderr.splitlines()[-1] == (
        busy_port_message(port)
        if busy == "tcp"
        else f"broker: cannot listen on unix socket {path}:"
        " another broker or program is listening on it"
    )
    assert "serving" not in result.stderr


HUB_PROVIDER = (
    "log_level: info\nproviders:\n  hub:\n    type: hub\n    url: http://127.0.0.1:9\n"
    "    client_id: c\n    client_secret: {env: HOME}\n"
)
