"""``broker check``: says OK only where ``serve`` would start.

Run as real processes (``python -m broker check ...``) with configs in tmp_path.
"""

from __future__ import annotations

from pathlib import Path

from broker.fakes import hub
from tests.test_cli import run


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


def test_check_warns_about_plain_http_to_other_hosts_only(tmp_path: Path) -> None:
    """http:// to another host sends secrets in clear text: a warning, not a failure.
    Loopback (127.0.0.0/8, ::1, localhost) is fine; nothing is sent without --login."""
    config = write_config(
        tmp_path,
        "providers:\n"
        + hub_provider("remote", "http://user:pw-in-url@hub.example.com:8080/hub")
        + hub_provider("secure", "https://hub.example.com")
        + hub_provider("local4", "http://127.0.0.2:9")
        + hub_provider("local6", "http://[::1]:9")
        + hub_provider("localname", "http://localhost:9"),
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: {config}: providers.remote: token requests go to"
        " http://hub.example.com:8080/hub/api/rest/oauth2/token in plain http: passwords,"
        " client secrets and tokens cross the network unencrypted; use https://"
    ]
