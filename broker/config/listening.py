"""The ``listen_unix`` and ``metrics_listen`` settings and the caller ids of ``clients``
(uids, gids, programs).

uids and gids may be given as names; they are looked up on this host when the config
is read. The sockets themselves are made by :mod:`broker.server.listeners` and
:mod:`broker.server.unixsocket`.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from broker.config.filemode import FileMode
from broker.config.problems import FieldProblem
from broker.core.addresses import is_loopback_address

SUN_PATH_MAX = 107
"""Bytes of a socket path the kernel takes (``sun_path`` is 108 with the final NUL)."""


def _id_or_name(kind: str, look_up: Callable[[str], int]) -> Callable[[object], object]:
    """A validator taking a number as it is and a name as *look_up* finds it on this host."""

    def parse(value: object) -> object:
        if isinstance(value, str) and not value.isdigit():
            try:
                return look_up(value)
            except KeyError:
                msg = f"no {kind} named {value!r} on this host (give the {kind[0]}id as a number)"
                raise ValueError(msg) from None
        return value

    return parse


_user_id = _id_or_name("user", lambda name: pwd.getpwnam(name).pw_uid)
_group_id = _id_or_name("group", lambda name: grp.getgrnam(name).gr_gid)


def _is_id(value: int) -> int:
    if isinstance(value, bool) or not 0 <= value < 2**32 - 1:
        msg = "must be a number from 0 to 4294967294, or a name"
        raise ValueError(msg)
    return value


UserId = Annotated[int, BeforeValidator(_user_id), AfterValidator(_is_id)]
"""``unix_uid: 1001`` or ``unix_uid: billing`` (looked up when the config is read)."""
GroupId = Annotated[int, BeforeValidator(_group_id), AfterValidator(_is_id)]


def _absolute_program(value: str) -> str:
    if not os.path.isabs(value):
        msg = "must be an absolute path, as /proc/<pid>/exe names it (e.g. /usr/bin/python3.11)"
        raise ValueError(msg)
    return value


ProgramPath = Annotated[str, AfterValidator(_absolute_program)]


def _socket_path(value: Path) -> Path:
    if not value.is_absolute():
        msg = "must be an absolute path"
        raise ValueError(msg)
    if len(os.fsencode(value)) > SUN_PATH_MAX:
        msg = f"is longer than the {SUN_PATH_MAX} bytes a socket path may have"
        raise ValueError(msg)
    return value


SocketPath = Annotated[Path, AfterValidator(_socket_path)]


def _path_only(value: object) -> object:
    return {"path": value} if isinstance(value, str) else value


class UnixSocketSettings(BaseModel):
    """``listen_unix``: a path, or ``{path, mode, group}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: SocketPath
    """Where the socket is made; its directory is created (0755) if missing."""
    mode: FileMode = 0o660
    """Who may connect: the socket file's permission bits (connecting needs write)."""
    group: GroupId | None = None
    """The socket file's group (name or gid); default the broker's own."""


UnixListen = Annotated[UnixSocketSettings, BeforeValidator(_path_only)]


METRICS_PORT = 9464
"""``metrics_listen``'s port when only the host is given: the one OpenTelemetry's Prometheus
exporter uses."""


def _host_and_port(value: object) -> object:
    """``9464``, ``"127.0.0.1:9464"``, ``"[::1]:9464"`` or ``"localhost:9464"`` as
    ``{host, port}``; a mapping as it is."""
    if isinstance(value, bool):
        return value  # refused by the model, as any other non-mapping
    if isinstance(value, int):
        return {"port": value}
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.isdigit():
        return {"port": text}
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            msg = "must be host:port, an IPv6 address in brackets: [::1]:9464"
            raise ValueError(msg)
        return {"host": host, "port": rest[1:]}
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        msg = "must be host:port (127.0.0.1:9464), a port, or {host, port}"
        raise ValueError(msg)
    if ":" in host:
        msg = "an IPv6 address goes in brackets: [::1]:9464"
        raise ValueError(msg)
    return {"host": host, "port": port}


class MetricsListenSettings(BaseModel):
    """``metrics_listen``: a listener of its own for Prometheus, ``host:port`` or
    ``{host, port, allow_unauthenticated_network}``. It serves ``GET /metrics`` without a
    client key, and ``/healthz``; nothing else (no token is reachable there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    """Loopback by default, like the broker's own address."""
    port: int = Field(METRICS_PORT, ge=0, le=65535)
    allow_unauthenticated_network: bool = False
    """Listen on an address other machines reach (a Prometheus elsewhere, a pod's IP):
    anyone there can read the metrics, which need no key. Logged as a warning at start."""

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> MetricsListenSettings:
        if not is_loopback_address(self.host) and not self.allow_unauthenticated_network:
            msg = (
                f"{self.host} is reachable from other machines, and metrics there need no key;"
                " set metrics_listen.allow_unauthenticated_network: true to mean it"
            )
            raise FieldProblem(("host",), msg)
        return self

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


MetricsListen = Annotated[MetricsListenSettings, BeforeValidator(_host_and_port)]
