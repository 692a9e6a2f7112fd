"""Re-reading the config file (SIGHUP) without dropping tokens.

Everything the file holds takes effect when a reload is accepted: clients,
their keys and rights, the security settings, the refresh policy, providers,
``request_timeout`` and ``log_level``. A few keys are fixed for the life of
the process (the socket is bound, the state store open): for those the
reload compares the file's value with the value **in use** (command-line
overrides included) and logs the ones that wait for a restart, while the
rest of the new config is validated together with the values in use (so a
reload cannot, say, remove every client from a broker listening on the
network).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from broker.config.load import load_config
from broker.config.settings import BrokerSettings
from broker.core.errors import ConfigError
from broker.engine.manager import TokenManager
from broker.ops import heap
from broker.ops.logs import set_level
from broker.web.security import Guard

log = logging.getLogger("broker.reload")

RESTART_KEYS = (
    "host",
    "port",
    "listen_tcp",
    "listen_unix",
    "address_file",
    "metrics_listen",
    "log_format",
    "max_concurrent_requests",
    "state_dir",
    "state_key",
    "store",
    "limits",
)
"""Keys that only take effect at start: the sockets, the log handler, the request slots,
the state store and the connection limits are set up once."""
LISTENING_KEYS = ("host", "listen_tcp", "listen_unix")
"""The restart keys other keys are checked against: clients are needed on a network
address, and clients identified by uid need the Unix socket."""
SECRET_RESTART_KEYS = frozenset({"state_key", "store"})
"""Restart keys whose values are never logged."""


class Reloader:
    """Applies the config file at *path* to a running broker; one reload at a time."""

    def __init__(
        self,
        *,
        manager: TokenManager,
        guard: Guard,
        path: Path,
        in_use: BrokerSettings,
        overrides: Mapping[str, Any] | None = None,
        frozen_heap: bool = False,
    ) -> None:
        self._manager = manager
        self._frozen_heap = frozen_heap
        self._guard = guard
        self._path = path
        self._overrides = dict(overrides or {})
        self.in_use = in_use
        """The settings in force now."""
        self._lock = asyncio.Lock()  # two quick SIGHUPs apply one after the other
        self.triggered = 0
        """Reloads started by :meth:`trigger` (SIGHUP) so far."""

    def trigger(self) -> None:
        """Start a reload in the background (the SIGHUP handler)."""
        self.triggered += 1
        self._manager.background.spawn(self.reload(), name="reload")

    async def idle(self) -> None:
        """Wait for every reload started so far to finish."""
        while reloads := self._manager.background.named("reload"):
            await asyncio.gather(*reloads, return_exceptions=True)

    async def reload(self) -> bool:
        """Load the file and apply it; on any error keep the running config and say why."""
        # A reload replaces long-lived objects: let the collector see them (broker.ops.heap).
        with heap.thawed() if self._frozen_heap else contextlib.nullcontext():
            return await self._reload()

    async def _reload(self) -> bool:
        async with self._lock:
            try:
                new, waiting = await asyncio.to_thread(self._load)
            except ConfigError as exc:
                # One record, one line: a log shipper must not split it, nor lose its end.
                problems = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
                log.error("config reload rejected, the running config stays in force: %s", problems)
                self._manager.metrics.config_reloaded(ok=False)
                return False
            for key in waiting:
                log.warning("config reload: %s; it takes effect at the next restart", key)
            # The access rules first: a revoked key stops working the moment the reload
            # is accepted, before any provider work.
            self._guard.update(new)
            set_level(new.log_level)
            summary = await self._manager.update(new)
            self.in_use = new
            self._manager.metrics.config_reloaded(ok=True)
            log.info(
                "config reloaded from %s: added %s, removed %s, changed %s, retuned %s,"
                " unchanged %s; clients %d",
                self._path,
                summary["added"] or "none",
                summary["removed"] or "none",
                summary["changed"] or "none",
                summary["retuned"] or "none",
                len(summary["kept"]),
                len(new.clients),
            )
            return True

    def _load(self) -> tuple[BrokerSettings, list[str]]:
        """The new settings with the restart keys held at their values in use, and a line
        for each restart key whose file value differs from the value in use."""
        wanted = load_config(self._path, overrides=self._overrides)
        held = {key: getattr(self.in_use, key) for key in RESTART_KEYS}
        waiting = [
            _describe(key, held[key], getattr(wanted, key))
            for key in RESTART_KEYS
            if getattr(wanted, key) != held[key]
        ]
        if not waiting:
            return wanted, []
        changed = {key: held[key] for key in RESTART_KEYS if getattr(wanted, key) != held[key]}
        if any(key in changed for key in LISTENING_KEYS):
            # Validate the new file with the listeners in use: a reload must not leave a
            # network-facing broker without clients.
            listening = {key: _as_data(held[key]) for key in LISTENING_KEYS}
            wanted = load_config(self._path, overrides={**self._overrides, **listening})
        # The others were validated at start and no other key depends on them.
        return wanted.model_copy(update=changed), waiting


def _as_data(value: object) -> object:
    """A settings value as the config loader takes it (plain data, not a model)."""
    return value.model_dump() if isinstance(value, BaseModel) else value


def _describe(key: str, in_use: object, wanted: object) -> str:
    if key in SECRET_RESTART_KEYS:
        return f"{key} changed"
    return f"{key} changed from {in_use} to {wanted}"
