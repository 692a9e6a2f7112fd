"""``address_file``: where this broker listens, for its own probes.

``broker health``, ``wait`` and ``token`` run in the broker's container (a HEALTHCHECK, an
exec probe) but cannot read its config without loading what they are meant to avoid, so the
broker tells them: once every listener is bound it writes ``{"url": ..., "unix": ...,
"pid": ...}`` to the file, atomically, and removes it at exit. ``url`` is the address a
process on this host reaches: loopback when the broker listens on every interface.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from broker.core.addresses import local_url
from broker.core.errors import ConfigError
from broker.ops.atomic import replace_file
from broker.server.listeners import Listeners, port_of


class AddressFileError(ConfigError):
    """The address file could not be written (its path in the message)."""


def address_record(listeners: Listeners, host: str) -> dict[str, object]:
    record: dict[str, object] = {"pid": os.getpid()}
    if listeners.tcp:
        record["url"] = local_url(host, port_of(listeners.tcp))
    if listeners.unix is not None:
        record["unix"] = str(listeners.unix.path)
    return record


def write_address_file(path: Path, listeners: Listeners, host: str) -> None:
    """Write where *listeners* listen to *path* (mode 0644: an address is no secret)."""
    data = json.dumps(address_record(listeners, host)).encode() + b"\n"
    try:
        replace_file(path, data, mode=0o644)
    except OSError as exc:
        msg = f"address_file {path}: cannot write it: {exc.strerror or exc}"
        raise AddressFileError(msg) from None


def remove_address_file(path: Path) -> None:
    """Remove *path* if this process wrote it (a newer broker may have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_bytes()).get("pid") == os.getpid():
            path.unlink()
