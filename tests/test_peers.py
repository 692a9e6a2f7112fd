"""Unix socket callers: the config that names them, the kernel's credentials, the matching.

The end-to-end attacks (real processes under other uids on a real socket) are in
tests/test_unix_socket.py; these are the pure rules behind them.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import pytest

from broker.core.errors import ConfigError
from broker.web.peers import PeerCredentials, current_peer, peer_credentials
from broker.web.security import Client, Denied, Guard, _client_for
from broker_client import unix_socket_path
from tests.support import settings_from

OAUTH2 = """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/oauth/token
    grant: client_credentials
    client_id: app
    client_secret: app-secret
"""
KEY = "a-client-key-of-24-chars"


def config_error(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        settings_from(text)
    return [re.sub(r"^test\.yaml:\d+: ", "", line) for line in str(info.value).splitlines()]


# -- config ---------------------------------------------------------------------------------


def test_listen_unix_takes_a_path_or_a_mapping() -> None:
    short = settings_from("listen_unix: /run/broker/broker.sock\n" + OAUTH2).listen_unix
    full = settings_from(
        "listen_unix: {path: /run/b.sock, mode: 0666, group: 0}\n" + OAUTH2
    ).listen_unix

    assert short is not None
    assert full is not None
    assert (short.path, short.mode, short.group) == (Path("/run/broker/broker.sock"), 0o660, None)
    assert (full.path, full.mode, full.group) == (Path("/run/b.sock"), 0o666, 0)


def test_unix_ids_may_be_names_of_this_host() -> None:
    text = (
        "listen_unix: {path: /run/b.sock, group: root}\n"
        "clients:\n  ops: {unix_uid: root, unix_gid: root, status: true}\n" + OAUTH2
    )
    settings = settings_from(text)

    assert settings.listen_unix is not None
    assert settings.listen_unix.group == 0
    assert (settings.clients["ops"].unix_uid, settings.clients["ops"].unix_gid) == (0, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "listen_unix: run/b.sock\n",
            "listen_unix.path: must be an absolute path",
            id="relative",
        ),
        pytest.param(
            f"listen_unix: /{'x' * 120}\n",
            "listen_unix.path: is longer than the 107 bytes a socket path may have",
            id="too-long",
        ),
        pytest.param(
            "listen_unix: {path: /run/b.sock, mode: 660}\n",
            "listen_unix.mode: must be a file mode between 0 and 0777"
            " (660 is decimal; write 0660 or '0660' for octal)",
            id="decimal-mode",
        ),
        pytest.param(
            "listen_unix: {path: /run/b.sock, group: no-such-group-here}\n",
            "listen_unix.group: no group named 'no-such-group-here' on this host"
            " (give the gid as a number)",
            id="unknown-group",
        ),
        pytest.param(
            "listen_tcp: false\n",
            "listen_tcp: listen_tcp: false needs listen_unix (the broker would listen nowhere)",
            id="nowhere",
        ),
        pytest.param(
            "clients:\n  billing: {unix_uid: 1001, providers: [idp]}\n",
            "clients.billing.unix_uid: identifies callers on the Unix socket,"
            " but listen_unix is not set",
            id="uid-without-socket",
        ),
        pytest.param(
            "listen_unix: /run/b.sock\nclients:\n  billing: {providers: [idp]}\n",
            "clients.billing.key: a client needs a key, a unix_uid or a unix_gid",
            id="no-identity",
        ),
        pytest.param(
            "listen_unix: /run/b.sock\nclients:\n  billing: {unix_exe: /usr/bin/curl}\n",
            "clients.billing.unix_exe: unix_exe alone does not identify a caller:"
            " add unix_uid or unix_gid",
            id="exe-alone",
        ),
        pytest.param(
            "listen_unix: /run/b.sock\nclients:\n  b: {unix_uid: 1, unix_exe: curl}\n",
            "clients.b.unix_exe: must be an absolute path",
            id="exe-relative",
        ),
        pytest.param(
            "listen_unix: /run/b.sock\nclients:\n  b: {unix_uid: no-such-user-here}\n",
            "clients.b.unix_uid: no user named 'no-such-user-here' on this host"
            " (give the uid as a number)",
            id="unknown-user",
        ),
        pytest.param(
            "listen_unix: /run/b.sock\nclients:\n  b: {unix_uid: -1}\n",
            "clients.b.unix_uid: must be a number from 0 to 4294967294, or a name",
            id="negative-uid",
        ),
        pytest.param(
            "listen_unix: /run/b.sock\nclients:\n  a: {unix_uid: 7}\n  b: {unix_uid: 7}\n",
            "clients.b.unix_uid: the same unix_uid, unix_gid and unix_exe as client 'a'",
            id="same-identity",
        ),
    ],
)
def test_bad_unix_settings_name_the_key_and_the_problem(text: str, expected: str) -> None:
    lines = config_error(text + OAUTH2)
    assert any(line.startswith(expected) for line in lines), lines


def test_a_key_and_a_uid_may_name_one_client_and_two_clients_may_share_a_uid_with_keys() -> None:
    text = (
        "listen_unix: /run/b.sock\nclients:\n"
        f"  a: {{unix_uid: 7, key: {KEY}a}}\n  b: {{unix_uid: 7, key: {KEY}b}}\n" + OAUTH2
    )
    assert set(settings_from(text).clients) == {"a", "b"}


def test_a_socket_only_broker_on_a_network_address_needs_no_clients() -> None:
    # No TCP listener: the host is not reachable at all, so the network rule does not apply.
    settings = settings_from(
        "host: 0.0.0.0\nlisten_tcp: false\nlisten_unix: /run/b.sock\n" + OAUTH2
    )
    assert not settings.listen_tcp


# -- the kernel's credentials ---------------------------------------------------------------


def test_peer_credentials_name_the_connecting_process() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX)
    with ours, theirs:
        peer = peer_credentials(ours)

    assert peer == PeerCredentials(
        pid=os.getpid(), uid=os.geteuid(), gid=os.getegid(), exe=os.path.realpath(sys.executable)
    )


def test_a_tcp_socket_has_no_peer_credentials() -> None:
    with socket.socket() as sock:
        assert peer_credentials(sock) is None


# -- matching a caller to a client ------------------------------------------------------------

BILLING = Client("billing", None, frozenset({"idp"}), False, uid=1001)
BILLING_CURL = Client("billing-curl", None, frozenset({"*"}), False, uid=1001, exe="/usr/bin/curl")
STAFF = Client("staff", None, frozenset({"idp"}), False, gid=500)
BOTH = Client("both", b"both-key-0123456789", frozenset({"idp"}), False, uid=1005)
KEYED = Client("keyed", b"keyed-key-0123456789", frozenset({"*"}), True)
CLIENTS = (BILLING, BILLING_CURL, STAFF, BOTH, KEYED)


def peer(uid: int, gid: int = 100, exe: str | None = "/usr/bin/python3.11") -> PeerCredentials:
    return PeerCredentials(pid=4242, uid=uid, gid=gid, exe=exe)


@pytest.mark.parametrize(
    ("authorization", "caller", "expected"),
    [
        pytest.param(None, peer(1001), "billing", id="uid"),
        pytest.param(None, peer(1001, exe="/usr/bin/curl"), "billing-curl", id="most-specific"),
        pytest.param(None, peer(1001, exe=None), "billing", id="exe-unreadable"),
        pytest.param(None, peer(2000, gid=500), "staff", id="gid"),
        pytest.param(None, peer(1001, gid=500), "billing", id="equally-specific-first-listed"),
        pytest.param(None, peer(3000), None, id="unknown-uid"),
        pytest.param(None, None, None, id="tcp-without-key"),
        pytest.param("Bearer keyed-key-0123456789", None, "keyed", id="key-over-tcp"),
        pytest.param("Bearer keyed-key-0123456789", peer(3000), "keyed", id="key-on-socket"),
        pytest.param("Bearer keyed-key-0123456789", peer(1001), "keyed", id="key-beats-uid"),
        pytest.param("Bearer wrong-key-0123456789", peer(1001), None, id="wrong-key-no-fallback"),
        pytest.param("Basic Zm9vOmJhcg==", peer(1001), None, id="other-scheme-no-fallback"),
        pytest.param("Bearer both-key-0123456789", peer(1005), "both", id="key-and-uid"),
        pytest.param("Bearer both-key-0123456789", peer(1001), None, id="key-wrong-uid"),
        pytest.param("Bearer both-key-0123456789", None, None, id="key-and-uid-over-tcp"),
        pytest.param(None, peer(1005), None, id="uid-without-its-key"),
    ],
)
def test_which_client_a_caller_is(
    authorization: str | None, caller: PeerCredentials | None, expected: str | None
) -> None:
    found = _client_for(CLIENTS, authorization, caller)
    assert (found.name if found else None) == expected


def test_authorize_takes_the_caller_from_the_connection_context() -> None:
    guard = Guard(
        settings_from(
            "listen_unix: /run/b.sock\nclients:\n  billing: {unix_uid: 1001, providers: [idp]}\n"
            + OAUTH2
        )
    )
    reset = current_peer.set(peer(1001))
    try:
        assert guard.authorize(None, "idp", "token") == "billing"
    finally:
        current_peer.reset(reset)
    with pytest.raises(Denied) as refused:
        guard.authorize(None, "idp", "token")  # no caller in this context: a TCP request
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")


# -- broker_client's unix: URLs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("unix:/run/broker/broker.sock", "/run/broker/broker.sock"),
        ("unix:///run/broker/broker.sock", "/run/broker/broker.sock"),
        ("http://127.0.0.1:8181", None),
        ("https://broker:8181", None),
    ],
)
def test_unix_broker_urls(url: str, path: str | None) -> None:
    assert unix_socket_path(url) == path


def test_a_relative_unix_url_is_refused() -> None:
    with pytest.raises(ValueError, match="needs an absolute socket path"):
        unix_socket_path("unix:broker.sock")
