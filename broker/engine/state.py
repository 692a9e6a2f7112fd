"""Crash-safe persistence of each provider's newest refresh token: the state directory.

Identity providers rotate refresh tokens: once the broker has used one, the
old one is dead at the provider. If the broker is killed after a refresh and
has only kept the new refresh token in memory, the login is lost. So every
refresh token the broker receives is written here *before* the broker relies
on it, and on restart the broker resumes from it instead of logging in again.

Layout: one file per provider, ``<dir>/<provider>.json``, mode 0600, in a
directory of mode 0700 (created so whatever the umask). A directory its group or
other users can write to is refused, at start and before every save: whoever can
write there can plant a refresh token of theirs, swap ours or remove it. One they
can only read is warned about. What a file holds, plaintext or sealed with the
configured ``state_key``, is :mod:`broker.engine.state_file`.

The *fingerprint* (:mod:`broker.engine.fingerprint`) identifies the login a token
belongs to. When the provider's configuration changes (another token URL,
client or user) the persisted token is ignored and overwritten by the next save.

Writes are atomic and durable: a temporary file created 0600 in the same
directory is written, flushed and fsynced, renamed over the final name with
:func:`os.replace`, and then the directory itself is fsynced. A reader (or a
restarted broker) therefore sees the previous file or the new one, never a
partial one. A file that cannot be read, parsed or decrypted is logged (by
file name, never its content), renamed aside to
``<provider>.json.corrupt-<unix-ts>`` for forensics, and treated as absent:
the state directory can never stop the broker from starting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

from broker.core.names import PROVIDER_NAME
from broker.engine.state_file import MAX_STATE_FILE_BYTES, PersistedState, StateCodec, StateError
from broker.ops.atomic import TEMP_SUFFIX, fsync_directory, reason, replace_file, write_probe

log = logging.getLogger("broker.state")

STALE_TEMP_SECONDS = 60.0
"""Temporary files older than this (left by a killed broker) are removed at start."""

_CHECK_PREFIX = ".write-check-"


class StateStore:
    """One provider's newest refresh token per file in *directory*.

    Methods block on disk I/O (``save`` and ``delete`` fsync); call them from
    a thread (``asyncio.to_thread``) when on the event loop. One broker
    process per directory: replicas must not share one.
    """

    def __init__(
        self, directory: Path, *, key: bytes | None = None, wall: Callable[[], float] = time.time
    ) -> None:
        self._wall = wall
        """Wall-clock time: ``saved_at``, names of files moved aside, old temporary files."""
        self.directory = Path(directory)
        self._codec = StateCodec(key)
        self._warned: set[Path] = set()
        self._make_directory()
        if not self.directory.is_dir():
            msg = f"state directory {self.directory} is not a directory"
            raise StateError(msg)
        mode = self._refuse_if_others_can_write()
        self._check_mode(self.directory, mode, "0700")
        self._write_check()
        self._remove_stale_temps()

    # -- public API -----------------------------------------------------------

    def load(self, provider: str, fingerprint: str) -> PersistedState | None:
        """The refresh token saved for *provider* under *fingerprint*, or None.

        None when there is no file, when the file belongs to another login
        (fingerprint differs) or when it is unreadable, corrupt or cannot be
        decrypted (then a warning is logged and the file is moved aside).
        """
        path = self._path(provider)
        try:
            raw = self._read(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("state file %s cannot be read (%s); ignoring it", path, reason(exc))
            return None
        try:
            persisted = self._codec.decode(path, provider, fingerprint, raw)
        except StateError as exc:
            aside = self._move_aside(path)
            where = f"moved to {aside.name}" if aside is not None else "could not move it aside"
            log.warning("%s; ignoring it (%s)", exc, where)
            return None
        if persisted is None:
            log.info(
                "state file %s belongs to another login (the provider's configuration"
                " changed); not using it",
                path,
            )
        return persisted

    def save(self, provider: str, fingerprint: str, refresh_token: str) -> None:
        """Durably replace *provider*'s state with *refresh_token*.

        When this returns, the token is on disk and survives a crash. On any
        failure it raises StateError; the final file is then either the previous
        one, untouched, or (only when the directory fsync failed after the
        rename) the complete new one. Never a partial file.
        """
        path = self._path(provider)
        if not refresh_token:
            msg = f"refusing to save an empty refresh token for provider {provider!r}"
            raise StateError(msg)
        data = self._codec.encode(provider, fingerprint, refresh_token, self._wall())
        self._atomic_write(path, data)

    def delete(self, provider: str) -> None:
        """Forget *provider*'s refresh token (e.g. the identity provider refused it)."""
        path = self._path(provider)
        try:
            path.unlink(missing_ok=True)
            self._fsync_directory()
        except OSError as exc:
            msg = f"state file {path} cannot be deleted: {reason(exc)}"
            raise StateError(msg) from None

    # -- reading ----------------------------------------------------------------

    def _path(self, provider: str) -> Path:
        if not PROVIDER_NAME.fullmatch(provider):
            msg = f"invalid provider name {provider!r} (expected [a-z0-9][a-z0-9_-]{{0,62}})"
            raise StateError(msg)
        return self.directory / f"{provider}.json"

    def _read(self, path: Path) -> bytes:
        # O_NOFOLLOW: a symlink is not ours; O_NONBLOCK: a FIFO must not hang the start.
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise OSError(0, "not a regular file")
            self._check_mode(path, info.st_mode, "0600")
            return handle.read(MAX_STATE_FILE_BYTES + 1)

    def _move_aside(self, path: Path) -> Path | None:
        """Rename a bad file to ``<name>.corrupt-<unix-ts>``; None if that fails."""
        stamp = int(self._wall())
        for attempt in range(100):
            suffix = f".corrupt-{stamp}" if attempt == 0 else f".corrupt-{stamp}-{attempt}"
            target = path.with_name(path.name + suffix)
            if target.exists():
                continue
            try:
                os.rename(path, target)
            except OSError:
                return None
            with contextlib.suppress(OSError):
                self._fsync_directory()
            return target
        return None

    # -- writing ----------------------------------------------------------------

    def _atomic_write(self, path: Path, data: bytes) -> None:
        self._refuse_if_others_can_write()  # it may have been opened up since the start
        try:
            replace_file(path, data, mode=0o600)
        except OSError as exc:
            msg = f"state file {path} cannot be written: {reason(exc)}"
            raise StateError(msg) from None

    def _make_directory(self) -> None:
        """Create the directory 0700 if it is missing (its parents as the umask says)."""
        if self.directory.is_dir():
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"state directory {self.directory} cannot be created: {reason(exc)}"
            raise StateError(msg) from None
        # The umask may have narrowed the mode at creation (0277 takes our own write bit).
        os.chmod(self.directory, 0o700)

    def _refuse_if_others_can_write(self) -> int:
        """The directory's mode; StateError if group or others may write to it: they could
        plant a refresh token of theirs, swap ours or remove it."""
        try:
            mode = self.directory.stat().st_mode
        except OSError as exc:
            msg = f"state directory {self.directory} cannot be read: {reason(exc)}"
            raise StateError(msg) from None
        loose = stat.S_IMODE(mode) & (stat.S_IWGRP | stat.S_IWOTH)
        if loose:
            who = {stat.S_IWGRP: "its group", stat.S_IWOTH: "other users"}.get(
                loose, "its group and other users"
            )
            msg = (
                f"state directory {self.directory} is writable by {who}"
                f" (mode {oct(stat.S_IMODE(mode))}); refusing to keep refresh tokens there:"
                " make it 0700 (chmod 700) and owned by the user the broker runs as"
            )
            raise StateError(msg)
        return mode

    def _fsync_directory(self) -> None:
        fsync_directory(self.directory)

    def _write_check(self) -> None:
        """Prove the directory is writable now rather than at the first save."""
        probe = self.directory / f"{_CHECK_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        try:
            write_probe(probe)
        except OSError as exc:
            msg = f"state directory {self.directory} is not writable: {reason(exc)}"
            raise StateError(msg) from None

    def _remove_stale_temps(self) -> None:
        """Delete temporary files a killed broker left behind (they may hold a token)."""
        cutoff = self._wall() - STALE_TEMP_SECONDS
        for entry in self.directory.glob(f".*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()

    def _check_mode(self, path: Path, mode: int, wanted: str) -> None:
        if stat.S_IMODE(mode) & 0o077 and path not in self._warned:
            self._warned.add(path)
            log.warning(
                "%s is accessible to group or others (mode %s); it should be %s",
                path,
                oct(stat.S_IMODE(mode)),
                wanted,
            )
