"""A real ``redis-server`` for the tests (Debian's ``redis-server``; ``scripts/test``
installs it when it is missing): started on a free 127.0.0.1 port in a temporary
directory, with no persistence (or an AOF, for ``broker check``'s report), and stopped at
the end. Never a mock.

Each test that uses it takes a :class:`RedisPlace` of its own: a key prefix and a Redis
user (ACL) that may touch only the keys under it, so that tests sharing the server cannot
see each other's keys, and a test can take its place away (delete the user) to make every
command of a store fail.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from tests.support import free_port

REDIS_SERVER = "/usr/bin/redis-server"

START_PATIENCE = 10.0
"""Real seconds a starting server has to answer PING before the test fails."""

PASSWORD_CHARACTERS = "p@ss:w/rd %+ü#?"
"""Put in every place's password: each needs URL encoding, so a password that leaks in its
encoded spelling is caught as well as one that leaks as written."""


def require_redis_server() -> str:
    """The redis-server program; skips the test without it, except in CI (then it fails)."""
    if not shutil.which(REDIS_SERVER):
        reason = f"{REDIS_SERVER} is missing (apt-get install redis-server; scripts/test does)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return REDIS_SERVER


@dataclass(frozen=True)
class RedisPlace:
    """Where one test's stores keep their keys: a prefix, and a user of its own."""

    server: RedisServer
    prefix: str
    user: str
    password: str

    @property
    def url(self) -> str:
        """The URL a store connects with (the password URL-encoded, as it must be)."""
        return self.server.url(self.user, self.password)

    def remove(self) -> None:
        """Take the place away: the user is deleted, its connections are closed, and every
        command a store sends from now on fails (it cannot authenticate)."""
        with self.server.admin() as admin:
            admin.acl_deluser(self.user)

    def restore(self) -> None:
        """Give the place back after :meth:`remove` (the same user and password): stores
        connect again by themselves."""
        self.server.grant(self)

    def empty(self) -> None:
        """Delete every key under the prefix: what a Redis restarted without its data (no
        AOF, no RDB, a new node) looks like to the stores using this place."""
        with self.server.admin() as admin:
            keys = admin.keys(f"{self.prefix}*")
            if keys:
                admin.delete(*keys)

    def stored_keys(self) -> list[bytes]:
        """Every key under the prefix, sorted."""
        with self.server.admin() as admin:
            return sorted(
                k if isinstance(k, bytes) else k.encode() for k in admin.keys(f"{self.prefix}*")
            )

    def get(self, key: str) -> bytes | None:
        with self.server.admin() as admin:
            value = admin.get(key)
            assert value is None or isinstance(value, bytes)
            return value

    def pttl(self, key: str) -> int:
        """Milliseconds until *key* expires (-1: never, -2: no such key)."""
        with self.server.admin() as admin:
            left = admin.pttl(key)
            assert isinstance(left, int)
            return left


@dataclass(frozen=True)
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def url(self, user: str | None = None, password: str | None = None) -> str:
        credentials = ""
        if password is not None:
            credentials = f"{quote(user or '', safe='')}:{quote(password, safe='')}@"
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    @contextlib.contextmanager
    def admin(self) -> Iterator[redis.Redis]:
        """A synchronous client as the default (all-powerful) user: the test's own view."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            yield client
        finally:
            client.close()

    def place(self) -> RedisPlace:
        """A fresh key prefix and a user that may use only the keys under it."""
        tag = secrets.token_hex(6)
        place = RedisPlace(
            self,
            prefix=f"test-{tag}:",
            user=f"user-{tag}",
            password=f"{PASSWORD_CHARACTERS}{secrets.token_hex(8)}",
        )
        self.grant(place)
        return place

    def grant(self, place: RedisPlace) -> None:
        """(Re)create *place*'s user: its password, its keys and pub/sub channels, every
        command."""
        with self.admin() as admin:
            admin.acl_setuser(
                place.user,
                enabled=True,
                passwords=[f"+{place.password}"],
                keys=[f"{place.prefix}*"],
                channels=[f"{place.prefix}*"],
                commands=["+@all"],
            )


@contextlib.contextmanager
def run_redis_server(directory: Path, *, appendonly: bool = False) -> Iterator[RedisServer]:
    """Run ``redis-server`` on a free 127.0.0.1 port in *directory* until the end; with
    *appendonly* it keeps an AOF there (and still no RDB save points)."""
    server = _start(free_port(), directory, appendonly=appendonly)
    try:
        yield server
    finally:
        _stop(server.process)


class RestartableRedis:
    """A redis-server of one test's own that the test may stop and start again on the same
    port, as an outage of the one Redis its brokers share: in the same directory, or in a
    new one, empty (what was stored is gone, as on a fresh server after a failover).

    Without persistence (the default) a restart in the same directory is empty too; with
    *appendonly* it reads back its AOF. Its default user has no password and may do
    anything: no other test shares it, so it needs no :class:`RedisPlace` (and a place's
    user would not survive a restart: users are configuration, not data). Between a stop
    and a start the port is free; another program could take it (unlikely: it is not
    handed out again at once).
    """

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.port = free_port()
        self.appendonly = appendonly
        self._directory = directory
        self._server: RedisServer | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def server(self) -> RedisServer:
        """The server running now; fails the test when it is stopped."""
        if self._server is None:
            pytest.fail("the redis-server is stopped")
        return self._server

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, directory: Path | None = None) -> RedisServer:
        """Start it on its port: in *directory* (a new one: empty), else in its last one."""
        if self._server is not None:
            pytest.fail("the redis-server is running already")
        if directory is not None:
            self._directory = directory
        self._server = _start(self.port, self._directory, appendonly=self.appendonly)
        return self._server

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 10 s): every connection to it is closed and
        every new one refused until :meth:`start`."""
        if self._server is not None:
            _stop(self._server.process)
            self._server = None


@contextlib.contextmanager
def restartable_redis_server(directory: Path) -> Iterator[RestartableRedis]:
    """A :class:`RestartableRedis`, started in *directory*; stopped at the end."""
    redis_process = RestartableRedis(directory)
    redis_process.start()
    try:
        yield redis_process
    finally:
        redis_process.stop()


def _start(port: int, directory: Path, *, appendonly: bool) -> RedisServer:
    program = require_redis_server()
    directory.mkdir(parents=True, exist_ok=True)
    args = [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    args += ["yes" if appendonly else "no", "--dir", str(directory)]
    args += ["--logfile", str(directory / "redis.log")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = RedisServer(port, directory, process)
    try:
        _wait_for_ping(server)
    except BaseException:
        _stop(process)
        raise
    return server


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_for_ping(server: RedisServer) -> None:
    deadline = time.monotonic() + START_PATIENCE
    while True:
        if server.process.poll() is not None:
            log = server.directory / "redis.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            pytest.fail(f"redis-server exited with status {server.process.returncode}:\n{text}")
        with contextlib.suppress(redis.ConnectionError), server.admin() as admin:
            if admin.ping():
                return
        if time.monotonic() > deadline:
            pytest.fail(f"redis-server did not answer PING within {START_PATIENCE:g} s")
        time.sleep(0.01)  # it is starting: a few milliseconds
