"""The configuration's model: the broker's keys, its callers (``clients``), limits and
listening addresses, each validated where it is defined.

Providers' keys are in :mod:`broker.config.providers`; reading the file, the
``BROKER_*`` environment and the command line onto this model, with errors that name
where a value came from, is :mod:`broker.config.load`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from broker.config.listening import GroupId, MetricsListen, ProgramPath, UnixListen, UserId
from broker.config.problems import FieldProblem
from broker.config.providers import ProviderConfig
from broker.config.secrets import OptionalSecret, not_text
from broker.config.store import StoreSettings
from broker.core.addresses import is_loopback_address
from broker.core.names import PROVIDER_NAME
from broker.policy.schedule import RefreshSettings

log = logging.getLogger("broker.config")


def _name_is_text(value: object) -> object:
    error = not_text(value, '"<name>":')
    if error is not None:
        raise error
    return value


def _provider_name(value: str) -> str:
    if not PROVIDER_NAME.fullmatch(value):
        msg = (
            "a provider name must be 1-63 characters of a-z, 0-9, '_' and '-',"
            " starting with a letter or digit (it appears in URLs)"
        )
        raise ValueError(msg)
    return value


ProviderName = Annotated[str, BeforeValidator(_name_is_text), AfterValidator(_provider_name)]


class ClientConfig(BaseModel):
    """A caller of the broker, identified by its key, by who it is on the Unix socket
    (``unix_uid``, ``unix_gid``, ``unix_exe``), or by both (then both must match)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: OptionalSecret = None
    """Sent as ``Authorization: Bearer <key>``; at least 16 characters."""
    unix_uid: UserId | None = None
    """On the Unix socket (``listen_unix``): the caller's uid, as the kernel reports it."""
    unix_gid: GroupId | None = None
    """On the Unix socket: the caller's (primary, effective) gid."""
    unix_exe: ProgramPath | None = None
    """On the Unix socket: the program the caller runs (``/proc/<pid>/exe``). It names the
    interpreter, not the script, and needs the caller in the broker's PID namespace; a
    narrowing of unix_uid or unix_gid, never enough alone."""
    providers: list[str] = Field(default_factory=list)
    """Providers whose tokens this client may read (and refresh); ``"*"`` for all."""
    status: bool = False
    """May read /providers and the details of /readyz."""
    login: bool = False
    """May start a person's login for its providers (``broker login``): asks the broker for a
    one-time login URL, or seeds a refresh token."""

    @property
    def by_peer(self) -> bool:
        """Whether this client is identified (also) by its Unix socket credentials."""
        return self.unix_uid is not None or self.unix_gid is not None

    @model_validator(mode="after")
    def _identified(self) -> ClientConfig:
        if self.key is None and not self.by_peer:
            if self.unix_exe is not None:
                msg = "unix_exe alone does not identify a caller: add unix_uid or unix_gid"
                raise FieldProblem(("unix_exe",), msg)
            msg = "a client needs a key, a unix_uid or a unix_gid"
            raise FieldProblem(("key",), msg)
        if self.unix_exe is not None and not self.by_peer:
            msg = "unix_exe narrows unix_uid or unix_gid: add one of them"
            raise FieldProblem(("unix_exe",), msg)
        if self.key is not None and len(self.key.get_secret_value()) < MIN_CLIENT_KEY_LENGTH:
            msg = f"a client key must be at least {MIN_CLIENT_KEY_LENGTH} characters"
            raise FieldProblem(("key",), msg)
        return self


class RequiredHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    value: str = Field(min_length=1)


class SecuritySettings(BaseModel):
    """Defences against SSRF, DNS rebinding and browsers; see README "Security"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_hosts: list[str] = Field(default_factory=list)
    """Host header names accepted besides localhost, 127.0.0.1, ::1 and the listen address
    (e.g. the compose service name ``broker``)."""
    require_header: RequiredHeader | None = None
    """A header every request must carry, as metadata servers require ``Metadata-Flavor``."""
    allow_unauthenticated_network: bool = False
    """Serve non-loopback callers without client keys. Dangerous; logged loudly."""


MIN_CLIENT_KEY_LENGTH = 16


class LimitsSettings(BaseModel):
    """How long callers' connections may stay quiet and how many may be open at once
    (:mod:`broker.server.connguard`); taken at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header_timeout: float = Field(5.0, gt=0, le=300)
    """Seconds a connection has to deliver a whole request head: from when it is opened,
    and from the first byte of each further request on a kept-alive connection. Bytes
    trickling in do not extend it (slowloris). Also the time a caller that has stopped
    reading its answers has to start again."""
    keepalive_timeout: int = Field(5, ge=1, le=3600)
    """Seconds an idle kept-alive connection is held open for the caller's next request."""
    max_connections: int = Field(1024, ge=1, le=1_000_000)
    """Callers' connections open at once, at most. Lower when the open-file limit leaves
    less room (see fd_reserve)."""
    fd_reserve: int = Field(64, ge=0, le=1_000_000)
    """File descriptors kept back from callers' connections for the rest of the broker:
    standard streams and logs, the event loop, listening sockets, state directory and
    sink files. Token requests have their own share (two per max_concurrent_requests)."""


class BrokerSettings(BaseModel):
    """The whole configuration (:func:`load_config` reads it with its overrides)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    """Listen address. Loopback by default: tokens are for this host only."""
    port: int = Field(8181, ge=0, le=65535)
    listen_tcp: bool = True
    """Listen on host:port. ``false`` with listen_unix: the Unix socket only."""
    listen_unix: UnixListen | None = None
    """A Unix domain socket to listen on as well (``/run/broker/broker.sock``, or
    ``{path, mode, group}``); callers there can be identified by their uid."""
    address_file: Path | None = None
    """A file the broker writes once it listens (JSON: its ``url``, ``unix`` socket and
    ``pid``) and removes at exit, so that ``broker health|wait|token`` find a broker on
    another port: set it by environment (``BROKER_ADDRESS_FILE``), which those commands
    read too. The image sets it to ``/var/lib/broker/address.json``."""
    metrics_listen: MetricsListen | None = None
    """A listener of its own for Prometheus (``127.0.0.1:9464``, or ``{host, port}``): GET
    /metrics there needs no client key; /metrics on the broker's own address stays, for
    callers allowed status."""
    log_level: Literal["trace", "debug", "info", "warning", "error"] = "info"
    """``debug``: the broker's own debug lines and the HTTP client's line per request;
    ``trace``: also the HTTP client's connection and TLS internals, and uvicorn's per
    connection lines. No level logs a secret."""
    log_format: Literal["text", "json"] = "text"
    """``text``: one human-readable line per event; ``json``: one JSON object per line."""
    max_concurrent_requests: int = Field(32, ge=1, le=1000)
    """Token requests in flight to identity providers at once, over all providers; more
    wait their turn (their timeout starts when they are sent), so thousands of providers
    can start together without overwhelming the identity providers or the broker."""
    request_timeout: float = Field(10.0, gt=0)
    """How long a caller waits for a token that is being fetched (cold start,
    min_valid, forced refresh) before getting a 503."""
    state_dir: Path | None = None
    """Directory where each provider's newest refresh token is kept, crash-safely,
    so a restart resumes the login. Unset: refresh tokens live in memory only. With
    ``store.backend: redis``, this replica's own copy, used only when Redis answers but
    has lost the refresh token (restarted empty)."""
    state_key: OptionalSecret = None
    """Fernet key that encrypts the state directory's files at rest (and, with
    ``store.backend: redis``, what the broker writes to Redis)."""
    store: StoreSettings = StoreSettings()
    """Where tokens live beyond memory: this broker alone, or a Redis shared by replicas."""
    refresh: RefreshSettings = RefreshSettings()
    clients: dict[ProviderName, ClientConfig] = Field(default_factory=dict)
    """Callers and what they may read. None: only this host's processes may call."""
    security: SecuritySettings = SecuritySettings()
    docs: bool = False
    """Serve the interactive API docs (Swagger UI, shipped with the broker) at ``/docs`` to
    callers allowed status. Off by default: a page on the broker's origin that runs a
    script could read tokens. ``/openapi.json`` is served either way (to the same callers)."""
    limits: LimitsSettings = LimitsSettings()
    providers: dict[ProviderName, ProviderConfig]

    @model_validator(mode="after")
    def _some_providers(self) -> BrokerSettings:
        if not self.providers:
            raise FieldProblem(("providers",), "at least one provider must be configured")
        return self

    @model_validator(mode="after")
    def _clients_name_real_providers(self) -> BrokerSettings:
        keys: dict[str, str] = {}
        peers: dict[tuple[int | None, int | None, str | None], str] = {}
        for name, client in self.clients.items():
            unknown = [p for p in client.providers if p != "*" and p not in self.providers]
            if unknown:
                msg = f"no provider named {unknown[0]!r}"
                raise FieldProblem(("clients", name, "providers"), msg)
            if client.key is not None:
                other = keys.setdefault(client.key.get_secret_value(), name)
                if other != name:
                    msg = f"the same key as client {other!r}; give each its own"
                    raise FieldProblem(("clients", name, "key"), msg)
            if client.by_peer and self.listen_unix is None:
                field = "unix_uid" if client.unix_uid is not None else "unix_gid"
                msg = "identifies callers on the Unix socket, but listen_unix is not set"
                raise FieldProblem(("clients", name, field), msg)
            if client.by_peer and client.key is None:
                identity = (client.unix_uid, client.unix_gid, client.unix_exe)
                other = peers.setdefault(identity, name)
                if other != name:
                    msg = f"the same unix_uid, unix_gid and unix_exe as client {other!r}"
                    raise FieldProblem(("clients", name, "unix_uid"), msg)
        return self

    @model_validator(mode="after")
    def _a_file_per_sink(self) -> BrokerSettings:
        first: dict[Path, str] = {}
        for name, provider in self.providers.items():
            for key, sink in provider.sink_configs():
                where = ".".join(("providers", name, *key))
                other = first.setdefault(sink.resolved_path(), where)
                if other != where:
                    msg = (
                        f"the same file as {other}; each sink needs a file of its own"
                        " (they would overwrite each other)"
                    )
                    raise FieldProblem(("providers", name, *key, "path"), msg)
        return self

    @model_validator(mode="after")
    def _somewhere_to_listen(self) -> BrokerSettings:
        if not self.listen_tcp and self.listen_unix is None:
            msg = "listen_tcp: false needs listen_unix (the broker would listen nowhere)"
            raise FieldProblem(("listen_tcp",), msg)
        return self

    @model_validator(mode="after")
    def _metrics_on_a_port_of_their_own(self) -> BrokerSettings:
        metrics = self.metrics_listen
        if (
            metrics is not None
            and self.listen_tcp
            and metrics.port == self.port != 0
            and metrics.host.lower() == self.host.lower()
        ):
            msg = "the broker's own host and port; give the metrics a port of their own"
            raise FieldProblem(("metrics_listen",), msg)
        return self

    @model_validator(mode="after")
    def _network_needs_clients(self) -> BrokerSettings:
        if (
            self.listen_tcp
            and not is_loopback_address(self.host)
            and not self.clients
            and not self.security.allow_unauthenticated_network
        ):
            msg = (
                f"{self.host} is reachable from other machines; configure clients"
                " (each with its own key) or, knowingly, set"
                " security.allow_unauthenticated_network: true"
            )
            raise FieldProblem(("host",), msg)
        return self

    def refresh_for(self, provider: str) -> RefreshSettings:
        return self.providers[provider].refresh or self.refresh
