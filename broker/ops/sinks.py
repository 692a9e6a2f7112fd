"""File sinks: write each new access token to a file, like Vault Agent's file sink.

For programs that cannot call ``GET /token/<name>``, a provider may name a
file that the broker rewrites on every refresh, or several (``sinks:``, a list of
the same mappings)::

    providers:
      hiro:
        ...
        sink:
          path: /run/broker/hiro.token
          format: token        # token | json | env
          mode: 0640           # octal, as for chmod (also 0o640 or "0640")

Formats:

``token``
    the bare access token, no trailing newline (``$(cat file)``, or a file-based
    ``Authorization`` header in a proxy).
``json``
    exactly what ``GET /token/<name>`` answers at the moment of writing
    (:meth:`broker.core.tokens.Token.json_body`: ``access_token``, ``token_type``,
    ``expires_in``, ``expires_at``, ``etag``), plus a newline.
``env``
    ``TOKEN='...'``, ``TOKEN_TYPE='Bearer'``, ``TOKEN_EXPIRES_AT='<RFC 3339>'`` (the
    ``expires_at`` of the JSON answer)
    (``env_prefix`` replaces ``TOKEN``); single-quoted, safe to ``.``-source in sh.

Every write is atomic: a temporary file is created next to the target with
``O_CREAT | O_EXCL``, given the configured owner and group (``owner``, ``group``) and
exactly the configured mode, written, fsynced, renamed over the target with
:func:`os.replace`, and the directory is fsynced. A reader opens either the previous
complete file or the new one, never a partial one, and never one with another owner,
group or mode. Errors name the file, never the token.

Giving a file away (an ``owner`` other than the broker's uid, a ``group`` it is not in)
takes root: a broker that is not root refuses such a sink at its start check, and at
every write, naming it (the kernel's own rule for ``chown``, without the capabilities
nuance: a root without ``CAP_CHOWN`` fails the check's trial file instead).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Final, NoReturn

from broker.config.sinks import SinkConfig
from broker.core.errors import BrokerError
from broker.core.tokens import Token
from broker.ops.atomic import TEMP_SUFFIX, reason, replace_file, write_probe

log = logging.getLogger("broker.sinks")

STALE_TEMP_SECONDS: Final = 60.0
"""check() removes this sink's temporary files older than this (left by a killed broker)."""


class SinkError(BrokerError):
    """A sink file cannot be written; the message names the path, never the token."""

    def __init__(self, message: str, *, key: str = "path") -> None:
        super().__init__(message)
        self.key = key
        """The sink's config key the problem is about: ``path``, ``owner`` or ``group``."""


def sh_quote(value: str) -> str:
    """*value* in single quotes for sh: ``'`` becomes ``'\\''``; nothing else is special."""
    return "'" + value.replace("'", "'\\''") + "'"


def render(config: SinkConfig, token: Token, now: float) -> bytes:
    """The file content for *token* at *now* (monotonic; pure: no I/O, no clock)."""
    if config.format == "token":
        return token.access_token.encode("utf-8")
    if config.format == "json":
        # The one JSON shape of a token answer, so a file reader and a GET caller agree.
        return token.json_body(now) + b"\n"
    prefix = config.env_prefix
    lines = [
        f"{prefix}={sh_quote(token.access_token)}",
        f"{prefix}_TYPE={sh_quote('Bearer')}",
        f"{prefix}_EXPIRES_AT={sh_quote(token.expires_at_text)}",
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


class FileSink:
    """Writes one provider's token to ``config.path``; methods block (use a thread)."""

    def __init__(self, config: SinkConfig, provider_name: str) -> None:
        self.config = config
        self.provider = provider_name
        self.path = config.path
        self._lock = threading.Lock()
        self._generation: int | None = None
        """The newest generation a write was asked for (an older one is skipped)."""
        self._written: int | None = None
        """The generation of the token in the file, if this sink wrote it and it is there."""

    def __repr__(self) -> str:
        return f"FileSink({self.provider!r}, {str(self.path)!r}, format={self.config.format!r})"

    def check(self) -> None:
        """At start: prove the directory accepts a file of ours, and sweep stale temp files.

        Raises SinkError naming the path when the directory is missing, not a
        directory or not writable, when the path is a directory, or when the file's
        ``owner`` or ``group`` cannot be given to it (not root; tried on a trial file).
        """
        directory = self.path.parent
        if not directory.is_dir():
            self._fail(f"directory {directory} does not exist or is not a directory")
        if self.path.is_dir():
            self._fail("it is a directory")
        try:
            write_probe(self._probe_path())
        except OSError as exc:
            self._fail(f"directory {directory} is not writable: {reason(exc)}")
        if self.config.owner is not None or self.config.group is not None:
            self._check_ownership()
            try:
                write_probe(self._probe_path(), owner=self._owner, group=self._group)
            except OSError as exc:
                key = "owner" if self.config.owner is not None else "group"
                why = f"cannot give a file in {directory} {self._ownership}: {reason(exc)}"
                self._fail(why, key=key)
        self._remove_stale_temps()

    def write(self, token: Token, now: float, *, generation: int | None = None) -> bool:
        """Atomically replace the file with *token* at *now* (monotonic), as configured.

        With *generation* (the provider's token counter), a write older than
        one already asked for is skipped (False), so two writes racing in threads
        cannot leave the older token on disk. True once written. Raises SinkError
        on failure; the file is then the previous complete one.
        """
        if not token.access_token or any(c in token.access_token for c in "\x00\r\n"):
            self._fail("refusing to write an empty or multi-line token")
        if self.config.owner is not None or self.config.group is not None:
            self._check_ownership()  # the kernel would refuse it too, with a vaguer reason
        with self._lock:
            if generation is not None:
                if self._generation is not None and generation < self._generation:
                    log.debug("%s: skipping a sink write of an older token", self.provider)
                    return False
                self._generation = generation
            data = render(self.config, token, now)
            self._atomic_write(data)
            self._written = generation
            return True

    def clear(self, *, generation: int) -> bool:
        """Remove the file if it still holds the token of *generation* (now expired): True
        if it did.

        Whether or not a newer token was asked for since: one that could not be
        written left this token in the file. A reader then finds no token rather
        than an expired one; the next write recreates the file. Raises SinkError
        if it cannot be removed.
        """
        with self._lock:
            if self._written != generation:
                return False  # a newer token is in the file (or none of ours)
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                self._fail(f"cannot remove the expired token: {reason(exc)}")
            self._written = None
            return True

    # -- internals --------------------------------------------------------------------

    @property
    def _owner(self) -> int:
        return -1 if self.config.owner is None else self.config.owner

    @property
    def _group(self) -> int:
        return -1 if self.config.group is None else self.config.group

    @property
    def _ownership(self) -> str:
        """``owner 10001``, ``group 10001`` or ``owner 10001 and group 10001``."""
        parts = [f"owner {self.config.owner}"] if self.config.owner is not None else []
        if self.config.group is not None:
            parts.append(f"group {self.config.group}")
        return " and ".join(parts)

    def _check_ownership(self) -> None:
        """Refuse an owner or group that only root may give the file, unless root."""
        uid = os.geteuid()
        if uid == 0:
            return
        owner, group = self.config.owner, self.config.group
        if owner is not None and owner != uid:
            self._fail(
                f"owner {owner} needs the broker to run as root (it runs as uid {uid});"
                " leave owner out to keep the broker's own",
                key="owner",
            )
        if group is not None and group != os.getegid() and group not in os.getgroups():
            self._fail(
                f"group {group} needs the broker to run as root or in that group (it runs"
                f" as uid {uid}, not in group {group})",
                key="group",
            )

    def _probe_path(self) -> Path:
        name = f".{self.path.name}.check-{secrets.token_hex(4)}{TEMP_SUFFIX}"
        return self.path.parent / name

    def _atomic_write(self, data: bytes) -> None:
        try:
            replace_file(
                self.path, data, mode=self.config.mode, owner=self._owner, group=self._group
            )
        except OSError as exc:
            self._fail(f"cannot be written: {reason(exc)}")

    def _remove_stale_temps(self) -> None:
        # mtimes come from the kernel's clock, so they are compared with it, not the engine's.
        cutoff = time.time() - STALE_TEMP_SECONDS
        for entry in self.path.parent.glob(f".{self.path.name}.*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                info = entry.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    entry.unlink()

    def _fail(self, why: str, *, key: str = "path") -> NoReturn:
        msg = f"token sink {self.path} for provider {self.provider!r}: {why}"
        raise SinkError(msg, key=key)
