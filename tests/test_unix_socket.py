"""Callers on the broker's Unix socket, told apart by the kernel's word for who they are.

A real broker process listens on TCP and on a Unix socket; the callers are real processes
(curl, and Python with :mod:`broker_client`) started under other uids and gids, which the
broker learns from ``SO_PEERCRED``. The test runner must be root to start them, and curl
installed; without either this module is skipped, except in CI, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.support import BROKER, ROOT, Running, free_port, process, ready, wait_for

pytestmark = pytest.mark.smoke  # real processes, sockets or programs: see pyproject's markers

CURL = shutil.which("curl")
if os.geteuid() != 0 or CURL is None:
    reason = (
        "starting callers under other uids needs root"
        if os.geteuid() != 0
        else "curl is missing (apt-get install curl; scripts/test does)"
    )
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

BILLING_UID = 41001
OPS_UID = 41002
STRANGER_UID = 41003
PINNED_UID = 41004
BOTH_UID = 41005
SHARED_GID = 42000
"""The group of callers allowed to connect to a socket that is not open to everyone."""
BOTH_KEY = "both-key-2c5e8a1f7b3d9"
KEYED_KEY = "keyed-key-9d1b7e3a5c2f8"

PROVIDERS = """
providers:
  idp:
    type: oauth2
    token_url: "{idp}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret-for-unix
  other:
    type: oauth2
    token_url: "{idp}/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret-for-unix
"""


@pytest.fixture(scope="module")
def idp() -> Iterator[str]:
    fake = FakeOAuth2(clients={"app": "app-secret-for-unix"}, ttl=300)
    with serve_in_thread(fake.app) as url:
        yield url


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="broker-unix-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Broker:
    running: Running
    tcp: str
    sock: Path

    @property
    def log(self) -> str:
        return self.running.output


def start(config: str, config_dir: Path, port: int, sock: Path) -> Iterator[Broker]:
    """A broker serving *config* (which listens on *port* and *sock*), once it is ready."""
    path = config_dir / "config.yaml"
    path.write_text(config)
    path.chmod(0o600)
    with process("serve", "--config", str(path)) as running:
        tcp = f"http://127.0.0.1:{port}"
        wait_for(lambda: ready(tcp, running.proc), timeout=30)
        yield Broker(running, tcp, sock)


@pytest.fixture
def broker(idp: str, socket_dir: Path, tmp_path: Path) -> Iterator[Broker]:
    sock, port = socket_dir / "broker.sock", free_port()
    config = (
        f"port: {port}\n"
        f"listen_unix: {{path: {sock}, mode: 0666}}\n"
        "clients:\n"
        f"  billing: {{unix_uid: {BILLING_UID}, providers: [idp]}}\n"
        f"  ops: {{unix_uid: {OPS_UID}, status: true}}\n"
        f"  pinned: {{unix_uid: {PINNED_UID}, unix_exe: {_real(CURL)}, providers: [idp]}}\n"
        f"  both: {{key: {BOTH_KEY}, unix_uid: {BOTH_UID}, providers: [idp]}}\n"
        f"  keyed: {{key: {KEYED_KEY}, providers: ['*']}}\n" + PROVIDERS.format(idp=idp)
    )
    yield from start(config, tmp_path, port, sock)


def _real(path: str | None) -> str:
    return os.path.realpath(path) if path else "/usr/bin/curl"


@dataclass
class Answer:
    status: int
    body: dict[str, Any]


def curl_as(
    uid: int, sock: Path, path: str, *, key: str | None = None, gid: int | None = None
) -> Answer:
    """``curl --unix-socket`` run as *uid* (group *gid*, default the same number)."""
    assert CURL is not None
    command = [CURL, "-sS", "--unix-socket", str(sock), "-w", "\n%{http_code}"]
    if key is not None:
        command += ["-H", f"Authorization: Bearer {key}"]
    result = subprocess.run(
        [*command, f"http://localhost{path}"],
        capture_output=True,
        text=True,
        timeout=30,
        user=uid,
        group=uid if gid is None else gid,
        extra_groups=[],
    )
    if result.returncode != 0:
        return Answer(-result.returncode, {"curl": result.stderr.strip()})
    body, status = result.stdout.rsplit("\n", 1)
    return Answer(int(status), json.loads(body))


CLIENT_SCRIPT = """
import json, os, sys
from broker_client import BrokerAuth, BrokerUnavailable
auth = BrokerAuth(sys.argv[1], broker_url=sys.argv[2])
# Started as root, as the test's interpreter may live where only root can read (a pyenv
# under /root): one call as root (refused: no client is root) loads every module the
# helper needs; then this process becomes the caller, and the broker sees that uid.
try:
    auth.get_token()
except BrokerUnavailable:
    pass
uid = int(sys.argv[3])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
try:
    token = auth.get_token()
except BrokerUnavailable as exc:
    print(json.dumps({"error": exc.code}))
else:
    print(json.dumps({"token": token}))
"""


def python_client_as(uid: int, broker_url: str, provider: str = "idp") -> dict[str, str]:
    """broker_client's BrokerAuth in a Python process that has become *uid* (``os.setuid``)."""
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, provider, broker_url, str(uid)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, str] = json.loads(result.stdout)
    return answer


def tcp_token(broker: Broker, key: str = KEYED_KEY) -> str:
    response = httpx.get(
        f"{broker.tcp}/token/idp", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def test_a_caller_is_known_by_its_uid_and_gets_only_its_providers(broker: Broker) -> None:
    answer = curl_as(BILLING_UID, broker.sock, "/token/idp")

    assert answer.status == 200, answer
    assert answer.body["access_token"] == tcp_token(broker)
    assert curl_as(BILLING_UID, broker.sock, "/token/other").body["error"] == "forbidden"
    assert curl_as(BILLING_UID, broker.sock, "/providers").body["error"] == "forbidden"
    wait_for(lambda: "token served client=billing provider=idp" in broker.log)


def test_status_rights_by_uid_work_as_by_key(broker: Broker) -> None:
    status = curl_as(OPS_UID, broker.sock, "/providers")
    token = curl_as(OPS_UID, broker.sock, "/token/idp")

    assert status.status == 200, status
    assert set(status.body["providers"]) == {"idp", "other"}
    assert (token.status, token.body["error"]) == (403, "forbidden")


def test_an_unknown_uid_is_refused_and_told_its_uid(broker: Broker) -> None:
    answer = curl_as(STRANGER_UID, broker.sock, "/token/idp")

    assert (answer.status, answer.body["error"]) == (401, "unauthorized")
    assert f"uid {STRANGER_UID}" in str(answer.body["message"])
    # A key still identifies its client on the socket, whoever the caller is.
    keyed = curl_as(STRANGER_UID, broker.sock, "/token/other", key=KEYED_KEY)
    assert keyed.status == 200, keyed


def test_a_uid_client_cannot_be_reached_over_tcp(broker: Broker) -> None:
    # TCP callers have no kernel-vouched identity: billing, ops and pinned do not exist there.
    response = httpx.get(f"{broker.tcp}/token/idp", timeout=10)

    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_a_client_with_key_and_uid_needs_both(broker: Broker) -> None:
    assert curl_as(BOTH_UID, broker.sock, "/token/idp", key=BOTH_KEY).status == 200
    assert curl_as(BOTH_UID, broker.sock, "/token/idp").status == 401  # no key
    assert curl_as(STRANGER_UID, broker.sock, "/token/idp", key=BOTH_KEY).status == 401
    over_tcp = httpx.get(
        f"{broker.tcp}/token/idp", headers={"Authorization": f"Bearer {BOTH_KEY}"}, timeout=10
    )
    assert over_tcp.status_code == 401  # the key alone, without the uid: refused


def test_a_client_pinned_to_a_program_refuses_the_same_uid_running_another(
    broker: Broker,
) -> None:
    by_curl = curl_as(PINNED_UID, broker.sock, "/token/idp")
    by_python = python_client_as(PINNED_UID, f"unix:{broker.sock}")

    assert by_curl.status == 200, by_curl
    assert by_python == {"error": "unauthorized"}


def test_broker_client_reaches_the_socket_by_a_unix_url(broker: Broker) -> None:
    expected = tcp_token(broker)

    assert python_client_as(BILLING_UID, f"unix:{broker.sock}") == {"token": expected}
    assert python_client_as(BILLING_UID, f"unix://{broker.sock}") == {"token": expected}
    assert python_client_as(BILLING_UID, f"unix:{broker.sock}", "other") == {"error": "forbidden"}


def test_the_socket_file_has_the_configured_mode_and_goes_away_at_shutdown(
    idp: str, socket_dir: Path, tmp_path: Path
) -> None:
    sock, port = socket_dir / "run" / "broker.sock", free_port()  # its directory is made
    config = f"port: {port}\nlisten_unix: {{path: {sock}, mode: 0600}}\n" + PROVIDERS.format(
        idp=idp
    )
    with contextlib_closing(start(config, tmp_path, port, sock)) as broker:
        info = sock.lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert f"on http://127.0.0.1:{port} and unix:{sock}" in broker.log
    assert not sock.exists()


def test_mode_and_group_decide_who_may_connect(idp: str, socket_dir: Path, tmp_path: Path) -> None:
    sock, port = socket_dir / "broker.sock", free_port()
    config = (
        f"port: {port}\n"
        f"listen_unix: {{path: {sock}, group: {SHARED_GID}}}\n"  # default mode 0660
        "clients:\n"
        f"  billing: {{unix_uid: {BILLING_UID}, providers: [idp]}}\n" + PROVIDERS.format(idp=idp)
    )
    with contextlib_closing(start(config, tmp_path, port, sock)):
        info = sock.lstat()
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o660, SHARED_GID)
        in_group = curl_as(BILLING_UID, sock, "/token/idp", gid=SHARED_GID)
        outside = curl_as(BILLING_UID, sock, "/token/idp")
        outside_errno = connect_as(BILLING_UID, BILLING_UID, sock)

    assert in_group.status == 200, in_group
    assert outside.status == -7, outside  # curl: could not connect
    assert outside_errno == "EACCES"


CONNECT_SCRIPT = """
import errno, os, socket, sys
uid, gid = int(sys.argv[2]), int(sys.argv[3])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
sock = socket.socket(socket.AF_UNIX)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    print(errno.errorcode[exc.errno])
else:
    print("connected")
"""


def connect_as(uid: int, gid: int, sock: Path) -> str:
    """``connected``, or the errno name of a connect() to *sock* made as *uid*:*gid*."""
    result = subprocess.run(
        [sys.executable, "-c", CONNECT_SCRIPT, str(sock), str(uid), str(gid)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def test_a_socket_only_broker_listens_on_no_port(
    idp: str, socket_dir: Path, tmp_path: Path
) -> None:
    sock = socket_dir / "broker.sock"
    port = free_port()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        f"port: {port}\nlisten_tcp: false\nlisten_unix: {sock}\n" + PROVIDERS.format(idp=idp)
    )
    with (
        process("serve", "--config", str(config_path)) as running,
        httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost", timeout=5
        ) as client,
    ):
        wait_for(lambda: _accepts(sock, running), timeout=30)
        assert client.get("/readyz").status_code == 200
        token = client.get("/token/idp")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)

    assert token.status_code == 200
    assert f"serving 2 provider(s) on unix:{sock}\n" in running.output


def _accepts(sock: Path, running: Running) -> bool:
    """Whether the broker accepts connections on *sock* (and has a token to serve)."""
    if running.proc.poll() is not None:
        pytest.fail(f"broker exited early:\n{running.output}")
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return "state starting -> ready" in running.output


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_never_taken(
    idp: str, socket_dir: Path, tmp_path: Path
) -> None:
    sock = socket_dir / "broker.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens: what a killed broker leaves
    port = free_port()
    config = f"port: {port}\nlisten_unix: {sock}\n" + PROVIDERS.format(idp=idp)

    with contextlib_closing(start(config, tmp_path, port, sock)):
        second = tmp_path / "second.yaml"
        second.write_text(config.replace("port: ", f"port: {free_port()}\n# was port: ", 1))
        taken = _serve_once(second)

    assert taken.returncode == 2
    assert taken.stderr.strip().splitlines()[-1] == (
        f"broker: cannot listen on unix socket {sock}: another broker or program is listening on it"
    )


def test_a_path_that_is_not_a_socket_is_never_removed(socket_dir: Path, tmp_path: Path) -> None:
    sock = socket_dir / "broker.sock"
    sock.write_text("precious")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"port: {free_port()}\nlisten_unix: {sock}\n" + PROVIDERS.format(idp="http://127.0.0.1:9")
    )

    result = _serve_once(config)

    assert result.returncode == 2
    assert "is not a socket (remove it, or choose another path)" in result.stderr
    assert sock.read_text() == "precious"


def _serve_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


class contextlib_closing:
    """``with`` over a one-item generator of :func:`start` (a fixture-like broker)."""

    def __init__(self, gen: Iterator[Broker]) -> None:
        self._gen = gen

    def __enter__(self) -> Broker:
        return next(self._gen)

    def __exit__(self, *exc: object) -> None:
        for _ in self._gen:  # runs the rest: SIGTERM, wait, check the exit status
            pass


def test_the_probes_reach_a_broker_on_its_unix_socket_only(
    idp: str, socket_dir: Path, tmp_path: Path
) -> None:
    """With listen_tcp: false the address file holds only the socket; ``broker health``
    finds it there, ``broker token`` takes ``--url unix:<path>``."""
    sock, address = socket_dir / "broker.sock", tmp_path / "address.json"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        f"listen_tcp: false\nlisten_unix: {sock}\naddress_file: {address}\n"
        + PROVIDERS.format(idp=idp)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}

    def light(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*BROKER, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**env, **extra},
            check=False,
        )

    with process("serve", "--config", str(config_path)) as running:
        wait_for(lambda: _accepts(sock, running), timeout=30)
        written = json.loads(address.read_text())
        health = light("health", "--ready", BROKER_ADDRESS_FILE=str(address))
        token = light("token", "idp", "--url", f"unix:{sock}")
        wrong = light("health", "--url", f"unix:{socket_dir / 'nobody.sock'}")
    assert written == {"pid": running.proc.pid, "unix": str(sock)}
    assert health.returncode == 0, health.stderr
    assert token.returncode == 0, token.stderr
    assert token.stdout.count("\n") == 1
    assert len(token.stdout.strip()) > 10
    assert wrong.returncode == 1  # health: 0 or 1, as a HEALTHCHECK
    assert "did not answer" in wrong.stderr
