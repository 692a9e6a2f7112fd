"""``broker check``: says OK only where ``serve`` would start, and ``--login`` tries each login.

Run as real processes (``python -m broker check ...``) against the fakes on 127.0.0.1.
"""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.fakes import hiro, hub
from broker.fakes.hiro import FakeHiro
from broker.fakes.hub import FakeHub
from broker.fakes.server import serve_in_thread
from tests.redisserver import RedisPlace, RedisServer, run_redis_server
from tests.support import BROKER, ROOT, free_port
from tests.test_cli import run
from tests.test_replicas import spellings

pytestmark = pytest.mark.smoke  # real processes, sockets or programs: see pyproject's markers


def write_config(tmp_path: Path, text: str) -> Path:
    """The config file, private (0600) so inline secrets draw no warning of their own."""
    config = tmp_path / "config.yaml"
    config.write_text(text)
    config.chmod(0o600)
    return config


def hub_provider(name: str, url: str, secret: str = hub.DEMO_SERVICE_SECRET, **more: str) -> str:
    lines = [
        f"  {name}:",
        "    type: hub",
        f"    url: {url}",
        f"    client_id: {hub.DEMO_SERVICE_ID}",
        f"    client_secret: {secret}",
        *(f"    {key}: {value}" for key, value in more.items()),
    ]
    return "\n".join(lines) + "\n"


# -- writable directories ---------------------------------------------------------------


def test_check_fails_where_serve_could_not_write(tmp_path: Path) -> None:
    """state_dir and each sink directory are tried as serve tries them; every problem is
    named by key and path, and check exits 2 without saying OK."""
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("")  # a file where a directory belongs: unwritable even for root
    missing = tmp_path / "gone"
    config = write_config(
        tmp_path,
        f"state_dir: {not_a_dir}/state\n"
        "providers:\n"
        + hub_provider("hub", "https://hub.example.com", sink=f"{{path: {missing}/hub.token}}")
        + hub_provider("other", "https://hub.example.com", sink=f"{{path: {tmp_path}}}"),
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "OK" not in result.stdout
    assert result.stderr.splitlines() == [
        "broker: configuration error",
        f"{config}: state_dir: state directory {not_a_dir}/state cannot be created:"
        " Not a directory",
        f"{config}: providers.hub.sink.path: token sink {missing}/hub.token for provider"
        f" 'hub': directory {missing} does not exist or is not a directory",
        f"{config}: providers.other.sink.path: token sink {tmp_path} for provider 'other':"
        " it is a directory",
    ]


def test_check_names_each_sink_of_a_list_that_serve_could_not_write(tmp_path: Path) -> None:
    """With `sinks:`, each problem is named by the sink's place in the list."""
    missing = tmp_path / "gone"
    sinks = f"[{{path: {tmp_path}/hub.token}}, {{path: {missing}/hub.json, format: json}}]"
    config = write_config(
        tmp_path, "providers:\n" + hub_provider("hub", "https://hub.example.com", sinks=sinks)
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "broker: configuration error",
        f"{config}: providers.hub.sinks.1.path: token sink {missing}/hub.json for provider"
        f" 'hub': directory {missing} does not exist or is not a directory",
    ]


def test_check_accepts_writable_directories_and_leaves_nothing_behind(tmp_path: Path) -> None:
    state, sinks = tmp_path / "state", tmp_path / "sinks"
    state.mkdir(mode=0o700)
    sinks.mkdir()
    config = write_config(
        tmp_path,
        f"state_dir: {state}\nproviders:\n"
        + hub_provider("hub", "https://hub.example.com", sink=f"{{path: {sinks}/hub.token}}"),
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "OK, 1 provider(s)" in result.stdout
    assert list(state.iterdir()) == []
    assert list(sinks.iterdir()) == []


# -- plain http -------------------------------------------------------------------------


def test_check_refuses_plain_http_to_other_hosts(tmp_path: Path) -> None:
    """http:// to another host would send secrets in clear text: refused, naming the key.
    Loopback (127.0.0.0/8, ::1, localhost) is fine; nothing is sent without --login."""
    config = write_config(
        tmp_path,
        "providers:\n"
        + hub_provider("remote", "http://hub.example.com:8080/hub")
        + hub_provider("secure", "https://hub.example.com")
        + hub_provider("local4", "http://127.0.0.2:9")
        + hub_provider("local6", "http://[::1]:9")
        + hub_provider("localname", "http://localhost:9"),
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines()[1:] == [
        f"{config}:4: providers.remote.url: plain http:// to hub.example.com would send secrets"
        " and tokens unencrypted over the network; use https://, or set allow_insecure_http:"
        " true on this provider (for a trusted network only)"
    ]


def test_check_warns_about_allowed_plain_http(tmp_path: Path) -> None:
    """allow_insecure_http: true lets it start, with a warning at every start."""
    config = write_config(
        tmp_path,
        "providers:\n"
        + hub_provider("remote", "http://hub.example.com:8080/hub", allow_insecure_http="true"),
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: {config}: providers.remote: allow_insecure_http is set: token requests go"
        " to http://hub.example.com:8080/hub/api/rest/oauth2/token in plain http: passwords,"
        " client secrets and tokens cross the network unencrypted; use https://"
    ]


def test_check_refuses_credentials_in_urls(tmp_path: Path) -> None:
    """user:password@ in a URL is refused without echoing it (it would replace the client
    authentication, and be printed and logged)."""
    config = write_config(
        tmp_path, "providers:\n" + hub_provider("remote", "https://user:pw-in-url@hub.example.com")
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert "providers.remote.url: must not contain a user name or password" in result.stderr
    assert "pw-in-url" not in result.stdout + result.stderr


# -- check --login ----------------------------------------------------------------------


@dataclass
class Fakes:
    hiro: FakeHiro
    hub: FakeHub
    seeded_hub: FakeHub
    urls: dict[str, str]


@contextmanager
def fakes() -> Iterator[Fakes]:
    """A fake HIRO, a fake Hub, and a second fake Hub for a provider living on a refresh token."""
    world = Fakes(FakeHiro(ttl=3600), FakeHub(ttl=900), FakeHub(ttl=900), {})
    with ExitStack() as stack:
        for name in ("hiro", "hub", "seeded_hub"):
            world.urls[name] = stack.enter_context(serve_in_thread(getattr(world, name).app))
        yield world


def hiro_provider(url: str, sink: Path) -> str:
    return (
        "  hiro:\n    type: hiro\n"
        f"    url: {url}\n    client_id: {hiro.DEMO_CLIENT_ID}\n"
        f"    client_secret: {hiro.DEMO_CLIENT_SECRET}\n"
        f"    username: {hiro.DEMO_USERNAME}\n    password: {hiro.DEMO_PASSWORD}\n"
        f"    sink: {{path: {sink}}}\n"
    )


def test_check_login_reports_each_provider_and_saves_nothing(tmp_path: Path) -> None:
    """One login per provider with its primary grant: OK, refused, wrong URL, unreachable;
    a provider on a refresh token alone is skipped and its identity provider never called.
    Exit 1 because some failed; no secret or token in the output; no file written."""
    state = tmp_path / "state"
    sink = tmp_path / "hiro.token"
    with fakes() as world:
        seeded = world.seeded_hub.seed_refresh_token(hub.DEMO_LOGIN)
        config = write_config(
            tmp_path,
            f"state_dir: {state}\nproviders:\n"
            + hiro_provider(world.urls["hiro"], sink)
            + hub_provider("refused", world.urls["hub"], secret="wrong-hub-secret")
            + hub_provider("lost", world.urls["hub"] + "/no-hub-here")
            + hub_provider("down", f"http://127.0.0.1:{free_port()}")
            + hub_provider("seeded", world.urls["seeded_hub"], refresh_token=seeded),
        )
        result = run("check", "--login", "--config", str(config))
        assert len(world.hiro.token_requests()) == 1
        assert len(world.hub.token_requests()) == 1  # "lost" reached no token endpoint
        assert len(world.hub.requests) == 2
        assert world.seeded_hub.requests == []
        issued = world.hiro.issued_access_tokens + world.hiro.issued_refresh_tokens

    assert result.returncode == 1, result.stdout + result.stderr
    logins = result.stdout.split("test login: one token request per provider, nothing saved\n")
    assert logins[1].splitlines() == [
        "- hiro: login OK (token valid 3600 s)",
        "- refused: login FAILED: credentials refused (invalid_client)",
        "    token endpoint answered HTTP 401 invalid_client: Client authentication failed",
        "- lost: login FAILED: endpoint not found (endpoint_not_found)",
        "    token endpoint answered HTTP 404 endpoint_not_found: no token endpoint at this URL"
        " (check the url, token_url or auth_api, including any trailing slash)",
        "- down: login FAILED: identity provider unreachable (connect_error)",
        "    cannot reach the identity provider: ConnectError",
        "- seeded: skipped (lives on a refresh token; check --login never spends one)",
        "test login: 1 OK, 3 failed, 1 skipped",
    ]
    output = result.stdout + result.stderr
    secrets = [hiro.DEMO_CLIENT_SECRET, hiro.DEMO_PASSWORD, hub.DEMO_SERVICE_SECRET]
    for secret in [*secrets, "wrong-hub-secret", seeded, *issued]:
        assert secret not in output
    assert list(state.iterdir()) == []
    assert not sink.exists()


def test_check_login_exits_0_when_every_login_that_ran_succeeded(tmp_path: Path) -> None:
    with fakes() as world:
        seeded = world.seeded_hub.seed_refresh_token(hub.DEMO_LOGIN)
        config = write_config(
            tmp_path,
            "providers:\n"
            + hub_provider("hub", world.urls["hub"], scope="0-0-0-0-0")
            + hub_provider("seeded", world.urls["seeded_hub"], refresh_token=seeded),
        )
        result = run("check", "--login", "--config", str(config))
        assert len(world.hub.token_requests("client_credentials")) == 1
        assert world.seeded_hub.requests == []
    assert result.returncode == 0, result.stdout + result.stderr
    assert "- hub: login OK (token valid 900 s)" in result.stdout
    assert "test login: 1 OK, 0 failed, 1 skipped" in result.stdout


@pytest.mark.parametrize("mode", [0o770, 0o777], ids=oct)
def test_a_state_dir_others_can_write_to_stops_check_and_serve(tmp_path: Path, mode: int) -> None:
    """A local user who can write the state directory could plant a refresh token of
    theirs (or swap ours): check and serve both refuse it, naming the path and the mode,
    and serve does not start."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    port = free_port()
    config = write_config(
        tmp_path,
        f"port: {port}\nstate_dir: {state}\nproviders:\n"
        + hub_provider("hub", "https://hub.example.com"),
    )
    checked = run("check", "--config", str(config))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert f"state_dir: state directory {state} is writable by" in checked.stderr
    assert oct(mode) in checked.stderr
    served = subprocess.run(
        [*BROKER, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=20,  # a serve that started would run until then
        cwd=ROOT,
        check=False,
    )
    assert served.returncode == 2, served.stderr
    assert "state directory error" in served.stderr
    assert f"{state}" in served.stderr
    assert oct(mode) in served.stderr
    assert list(state.iterdir()) == []


def test_check_creates_a_missing_state_dir_0700_whatever_the_umask(tmp_path: Path) -> None:
    """Even under umask 0 the directory check (and so serve) creates is private."""
    state = tmp_path / "new" / "state"
    config = write_config(
        tmp_path, f"state_dir: {state}\nproviders:\n" + hub_provider("hub", "https://h.example")
    )
    checked = subprocess.run(
        ["/bin/sh", "-c", 'umask 0 && exec "$@"', "sh", *BROKER, "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_check_login_is_not_reached_with_a_config_error(tmp_path: Path) -> None:
    """A config problem exits 2 before any login is tried."""
    with fakes() as world:
        config = write_config(
            tmp_path,
            f"state_dir: {tmp_path / 'config.yaml'}\nproviders:\n"
            + hub_provider("hub", world.urls["hub"]),
        )
        result = run("check", "--login", "--config", str(config))
        assert world.hub.requests == []
    assert result.returncode == 2
    assert "test login" not in result.stdout


def test_ctrl_c_during_a_test_login_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """An identity provider that accepts the connection and never answers; Ctrl+C (SIGINT)
    while check --login waits: exit 130, 'interrupted', no traceback."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        config = write_config(
            tmp_path,
            "providers:\n" + hub_provider("slow", f"http://127.0.0.1:{port}", timeout="60"),
        )
        proc = subprocess.Popen(
            [*BROKER, "check", "--login", "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            silent.settimeout(30)
            connection, _ = silent.accept()  # the test login is waiting for an answer now
            with connection:
                proc.send_signal(signal.SIGINT)
                _, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 130
    assert "broker: interrupted" in stderr
    assert "Traceback" not in stderr


# -- the shared store (store.backend: redis) ----------------------------------------------


def redis_config(tmp_path: Path, prefix: str) -> Path:
    """A broker on Redis; the URL (with its password) from the environment, as advised."""
    return write_config(
        tmp_path,
        f"store:\n  backend: redis\n  url: {{env: TEST_REDIS_URL}}\n  key_prefix: '{prefix}'\n"
        "providers:\n" + hub_provider("hub", "https://hub.example.com"),
    )


def no_secret_of(place: RedisPlace, output: str) -> None:
    for secret in (place.url, *spellings(place.password)):
        assert secret not in output


def test_check_reports_a_redis_that_persists_nothing_with_a_warning(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    place = redis_server.place()
    with redis_server.admin() as admin:
        version = admin.info("server")["redis_version"]
    config = redis_config(tmp_path, place.prefix)
    result = run("check", "--config", str(config), env={"TEST_REDIS_URL": place.url})
    assert result.returncode == 0, result.stdout + result.stderr
    where = f"Redis at 127.0.0.1:{redis_server.port}/0"
    assert f"store: {where}, Redis {version}, persistence: none" in result.stdout.splitlines()
    assert result.stderr.splitlines() == [
        f"warning: store: {where} persists nothing (appendonly no, no save points): a"
        " restarted Redis forgets every refresh token; set appendonly yes"
    ]
    no_secret_of(place, result.stdout + result.stderr)
    assert place.stored_keys() == []  # nothing written


def test_check_reports_a_redis_with_an_aof_without_a_warning(tmp_path: Path) -> None:
    with run_redis_server(tmp_path / "redis", appendonly=True) as server:
        place = server.place()
        config = redis_config(tmp_path, place.prefix)
        result = run("check", "--config", str(config), env={"TEST_REDIS_URL": place.url})
        with server.admin() as admin:
            version = admin.info("server")["redis_version"]
    assert result.returncode == 0, result.stdout + result.stderr
    line = f"store: Redis at 127.0.0.1:{server.port}/0, Redis {version}, persistence: AOF on"
    assert line in result.stdout.splitlines()
    assert result.stderr == ""
    no_secret_of(place, result.stdout)


def test_check_fails_in_one_line_when_redis_refuses_the_user(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    place = redis_server.place()
    place.remove()
    config = redis_config(tmp_path, place.prefix)
    result = run("check", "--config", str(config), env={"TEST_REDIS_URL": place.url})
    assert result.returncode == 2
    assert "OK" not in result.stdout
    assert result.stderr.splitlines() == [
        f"broker: store error: Redis at 127.0.0.1:{redis_server.port}/0: connecting failed:"
        " invalid username-password pair or user is disabled."
    ]
    no_secret_of(place, result.stdout + result.stderr)


def test_check_fails_in_one_line_when_redis_cannot_be_reached(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    place = redis_server.place()
    port = free_port()  # nothing listens there
    url = place.url.replace(f":{redis_server.port}/", f":{port}/")
    config = redis_config(tmp_path, place.prefix)
    result = run("check", "--config", str(config), env={"TEST_REDIS_URL": url})
    assert result.returncode == 2
    assert "OK" not in result.stdout
    [line] = result.stderr.splitlines()
    assert line.startswith(f"broker: store error: Redis at 127.0.0.1:{port}/0: connecting failed:")
    assert "Connect" in line or "refused" in line
    no_secret_of(place, result.stdout + result.stderr)
