"""One record, one line: everything a ``broker serve`` process writes to stderr, as a log
shipper reads it (a line is a record), in text and in JSON."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import httpx
import pytest

from broker.fakes import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.support import free_port, process, wait_for

pytestmark = pytest.mark.smoke  # a real process, its signals and its stderr

TEXT_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ "
)

ECHOED = (
    'refused\nTraceback (most recent call last):\n  File "idp.py", line 1\r\n'
    "ValueError: boom\u2028and a line separator"
)
"""An identity provider's error description with line breaks of every kind."""

CONFIG = """\
port: {port}
log_level: trace
request_timeout: 1
log_format: {fmt}
refresh: {{backoff_initial: 0.2, backoff_max: 1, force_cooldown: 5}}
providers:
  echoing:
    type: oauth2
    grant: client_credentials
    token_url: "{idp}/oauth/token"
    client_id: app
    client_secret: app-secret-0123
  unreachable:
    type: oauth2
    grant: client_credentials
    token_url: "http://127.0.0.1:{closed}/oauth/token"
    client_id: app
    client_secret: app-secret-0123
"""
"""Trace, so that httpcore's record of each step (and of the connection that fails) and
uvicorn's per-connection lines are written too; ``force_cooldown`` is a deprecated key,
whose warning is made while the file is read, before logging is set up."""

REJECTED = """\
port: {port}
providers:
  "two\\nlines":
    type: oauth2
    token_url: not a url
"""
"""A reload the broker refuses with several problems, one naming a key with a line break."""


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 503  # no token: the logins fail
    except httpx.TransportError:
        return False


def records(output: str, fmt: str) -> list[str]:
    """The lines of *output*, each checked to be one whole record of *fmt*."""
    lines = output.split("\n")
    assert lines[-1] == "", "the last record ends its line"
    for line in lines[:-1]:
        assert line.splitlines() == [line], f"a line break inside: {line!r}"
        if fmt == "json":
            document = json.loads(line)
            assert {"ts", "level", "logger", "msg"} <= document.keys(), line
        else:
            assert TEXT_RECORD.match(line), f"not a record of its own: {line!r}"
    return lines[:-1]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_line_is_one_record(tmp_path: Path, fmt: str) -> None:
    """Start (a deprecated key's warning), uvicorn's lines, token requests that fail (an
    identity provider whose error text has line breaks, one whose connection is refused:
    httpx raises), a reload refused with several problems and a line break in a key, a
    reload of a file that is not UTF-8, and the shutdown: every line of stderr is one
    record, and each of those events is there."""
    fake = FakeOAuth2(clients={"app": "app-secret-0123"}, ttl=300.0)
    fake.fail_next(1000, 400, {"error": "invalid_client", "error_description": ECHOED})
    port = free_port()
    config = tmp_path / "config.yaml"
    with serve_in_thread(fake.app) as idp:
        config.write_text(CONFIG.format(port=port, fmt=fmt, idp=idp, closed=free_port()))
        config.chmod(0o600)
        with process("serve", "--config", str(config)) as broker:
            wait_for(lambda: answers(f"http://127.0.0.1:{port}/token/echoing"), timeout=30)
            wait_for(lambda: "unreachable: token request failed" in broker.output, timeout=30)
            wait_for(lambda: "echoing: token request failed" in broker.output, timeout=30)
            config.write_text(REJECTED.format(port=port))
            broker.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: broker.output.count("config reload rejected") == 1, timeout=30)
            config.write_bytes(b"port: \xff\xfe\n")
            broker.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: broker.output.count("config reload rejected") == 2, timeout=30)
    lines = records(broker.output, fmt)
    text = "\n".join(lines)
    for event in (
        "force_cooldown: no longer used",  # held while the file was read, then written
        "Started server process",  # uvicorn
        "HTTP connection made",  # uvicorn at trace
        "connect_tcp.failed",  # httpcore at trace: the refused connection
        "unreachable: token request failed",
        "echoing: token request failed",
        "not UTF-8 text",
        "Finished server process",
    ):
        assert event in text, event
    rejected = [line for line in lines if "config reload rejected" in line]
    assert "providers.two" in rejected[0]
    assert "token_url" in rejected[0]
