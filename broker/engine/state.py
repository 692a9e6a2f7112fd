"""Crash-safe persistence of each provider's newest refresh token.

Identity providers rotate refresh tokens: once the broker has used one, the
old one is dead at the provider. If the broker is killed after a refresh and
has only kept the new refresh token in memory, the login is lost. So every
refresh token the broker receives is written here *before* the broker relies
on it, and on restart the broker resumes from it instead of logging in again.

Layout: one file per provider, ``<dir>/<provider>.json``, mode 0600, in a
directory of mode 0700 (created so whatever the umask). A directory its group or
other users can write to is refused, at start and before every save: whoever can
write there can plant a refresh token of theirs, swap ours or remove it. One they
can only read is warned about::

    {"version": 1, "provider": "hiro", "fingerprint": "<sha256 hex>",
     "saved_at": 1764000000.0, "refresh_token": "<plaintext>"}

or, when a key is configured, the same without ``refresh_token`` and with
``"encrypted": "<Fernet token>"``. The Fernet token (AES-128-CBC + HMAC-SHA256,
from the ``cryptography`` package) encrypts a JSON payload holding the
provider name, the fingerprint, ``saved_at`` and the refresh token; all of
them are checked after decryption, so a file copied to another provider's
name, or edited, does not load. With a key configured a plaintext file is
refused too (it could have been planted by anyone able to write the
directory). Generate a key with::

    python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"

and give it to the config's ``state_key`` (``{env: NAME}`` or ``{file: /run/secrets/name}``).

The *fingerprint* (see :func:`fingerprint`) identifies the login a token
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
import hashlib
import json
import logging
import math
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from broker.config.providers import ProviderConfig
from broker.core.errors import BrokerError
from broker.core.names import PROVIDER_NAME
from broker.ops.atomic import TEMP_SUFFIX, fsync_directory, reason, replace_file, write_probe

log = logging.getLogger("broker.state")

VERSION = 1
"""The ``version`` written to every state file; other versions are refused."""

"""A provider name as the config allows it; anything else is refused (no path traversal)."""

MAX_STATE_FILE_BYTES = 64 * 1024
"""A state file larger than this is corrupt: a real one is well under 4 KiB."""

STALE_TEMP_SECONDS = 60.0
"""Temporary files older than this (left by a killed broker) are removed at start."""

_CHECK_PREFIX = ".write-check-"


class StateError(BrokerError):
    """The state directory or a state file cannot be used.

    The message names the directory, file, environment variable or key source,
    never a token or key.
    """


@dataclass(frozen=True)
class PersistedState:
    """A refresh token read back from the state directory."""

    refresh_token: str = field(repr=False)
    saved_at: float
    """Unix seconds of the save."""


def fingerprint(*parts: str) -> str:
    """A stable SHA-256 hex digest identifying one login, e.g. type, token URL, client id, user.

    Pass only non-secret identity parts: the digest is stored in plaintext and
    a secret with little entropy (a password) could be recovered from it by
    guessing. Parts are length-prefixed, so ``("ab", "c")`` and ``("a", "bc")``
    differ.
    """
    digest = hashlib.sha256(b"broker.state.fingerprint.v1\0")
    for part in parts:
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


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
        self._fernet: Fernet | None = None
        if key is not None:
            try:
                self._fernet = Fernet(key)
            except (ValueError, TypeError):
                msg = (
                    "the state encryption key is not a valid Fernet key (32 bytes, url-safe base64)"
                )
                raise StateError(msg) from None
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
            return self._parse(path, provider, fingerprint, raw)
        except StateError as exc:
            aside = self._move_aside(path)
            where = f"moved to {aside.name}" if aside is not None else "could not move it aside"
            log.warning("%s; ignoring it (%s)", exc, where)
            return None

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
        saved_at = self._wall()
        document: dict[str, Any] = {
            "version": VERSION,
            "provider": provider,
            "fingerprint": fingerprint,
            "saved_at": saved_at,
        }
        if self._fernet is None:
            document["refresh_token"] = refresh_token
        else:
            payload = {
                "provider": provider,
                "fingerprint": fingerprint,
                "saved_at": saved_at,
                "refresh_token": refresh_token,
            }
            sealed = self._fernet.encrypt(json.dumps(payload).encode("utf-8"))
            document["encrypted"] = sealed.decode("ascii")
        data = (json.dumps(document, indent=1) + "\n").encode("utf-8")
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

    def _parse(
        self, path: Path, provider: str, fingerprint: str, raw: bytes
    ) -> PersistedState | None:
        """Validate a state file; None on a fingerprint mismatch, StateError when corrupt."""

        def corrupt(why: str) -> StateError:
            return StateError(f"state file {path} is unusable: {why}")

        if len(raw) > MAX_STATE_FILE_BYTES:
            raise corrupt(f"larger than {MAX_STATE_FILE_BYTES} bytes")
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            # The decoder's message can quote the file; do not pass it on.
            raise corrupt("not valid JSON") from None
        if not isinstance(document, dict):
            raise corrupt("not a JSON object")
        if document.get("version") != VERSION:
            raise corrupt(f"unsupported version (expected {VERSION})")
        if document.get("provider") != provider:
            raise corrupt("written for another provider")
        stored_fingerprint = document.get("fingerprint")
        if not isinstance(stored_fingerprint, str):
            raise corrupt("no fingerprint")
        saved_at = _timestamp(document.get("saved_at"))
        if saved_at is None:
            raise corrupt("no valid saved_at")
        plain = document.get("refresh_token")
        sealed = document.get("encrypted")
        if (plain is None) == (sealed is None):
            raise corrupt("expected exactly one of refresh_token and encrypted")
        if stored_fingerprint != fingerprint:
            log.info(
                "state file %s belongs to another login (the provider's configuration"
                " changed); not using it",
                path,
            )
            return None
        if self._fernet is None:
            if sealed is not None:
                raise corrupt("encrypted, but no state encryption key is configured")
            if not isinstance(plain, str) or not plain:
                raise corrupt("refresh_token is not a non-empty string")
            return PersistedState(refresh_token=plain, saved_at=saved_at)
        if plain is not None:
            raise corrupt("not encrypted, but a state encryption key is configured")
        if not isinstance(sealed, str):
            raise corrupt("encrypted is not a string")
        try:
            opened = json.loads(self._fernet.decrypt(sealed.encode("ascii")))
        except (InvalidToken, UnicodeError, ValueError):
            raise corrupt("cannot be decrypted (wrong key, or the file was altered)") from None
        if not isinstance(opened, dict):
            raise corrupt("the decrypted payload is not a JSON object")
        if opened.get("provider") != provider or opened.get("fingerprint") != fingerprint:
            raise corrupt("the encrypted payload belongs to another provider or login")
        if _timestamp(opened.get("saved_at")) != saved_at:
            raise corrupt("saved_at does not match the encrypted payload")
        token = opened.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise corrupt("the encrypted refresh_token is not a non-empty string")
        return PersistedState(refresh_token=token, saved_at=saved_at)

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


def _timestamp(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


LOGIN_ENDPOINT_FIELDS = ("url", "token_url", "auth_api", "flow", "company_url")
"""The provider config fields that say where and how a login happens. Besides these the
type, ``client_id``, ``username`` and the seeded refresh token identify a login.
``tests/test_provider_types.py`` fails when a provider model gains a field that is neither
here nor listed there as not identifying the login. Fields added after the first five go
into a fingerprint only when set, so the state files saved before keep matching."""
_FIRST_ENDPOINT_FIELDS = 5


def login_fingerprint(config: ProviderConfig) -> str:
    """What identifies a login: a persisted refresh token is reused only for the same one.

    Only non-secret parts go in, plus a hash of the seeded refresh token so that
    a new seed in the config wins over an older persisted rotation of the old one.
    """
    seed = config.refresh_token.get_secret_value() if config.refresh_token else ""
    values = {key: str(getattr(config, key, "") or "") for key in LOGIN_ENDPOINT_FIELDS}
    first = [values[key] for key in LOGIN_ENDPOINT_FIELDS[:_FIRST_ENDPOINT_FIELDS]]
    later = LOGIN_ENDPOINT_FIELDS[_FIRST_ENDPOINT_FIELDS:]
    added = [f"{key}={values[key]}" for key in later if values[key]]
    return fingerprint(
        config.type,
        *first,
        config.client_id or "",
        config.username or "",
        hashlib.sha256(seed.encode()).hexdigest() if seed else "",
        *added,
    )
