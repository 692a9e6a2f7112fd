"""Durable, atomic file replacement: shared by the state directory and the token sinks.

A reader, or a broker restarted after a crash, sees the previous file or the
new one, never a part of either: the data goes to a temporary file in the same
directory (created with its final mode), is flushed and fsynced, renamed over
the target, and the directory is fsynced so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

TEMP_SUFFIX = ".tmp"
"""Temporary files are named ``.<target name>.<random>.tmp`` (swept when stale)."""


def replace_file(
    path: Path, data: bytes, *, mode: int = 0o600, owner: int = -1, group: int = -1
) -> None:
    """Atomically and durably replace *path* with *data*, with exactly *mode*, and the
    *owner* and *group* given (-1: the process's own).

    The owner, group and mode are set on the temporary file before anything is written
    to it and before it is renamed: the file never appears under *path* with others.
    Raises OSError. The temporary file is removed unless the rename happened;
    if only the directory fsync failed, *path* already holds the new data.
    """
    # A string, not path.with_name(): pathlib interns every name it parses, and a new
    # random name per write made CPython resize its table of interned strings every few
    # thousand writes, a fresh ~1.8 MB block each time that the heap did not give back
    # (the broker's memory grew in 1.8 MB steps, issue 12).
    temp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
    replaced = False
    try:
        fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as handle:
            if owner != -1 or group != -1:
                # Before the mode: a change of owner may clear mode bits.
                os.fchown(handle.fileno(), owner, group)
            os.fchmod(handle.fileno(), mode)  # the umask may have narrowed it at creation
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        replaced = True
        fsync_directory(path.parent)
    except OSError:
        if not replaced:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        raise


def write_probe(probe: Path, *, owner: int = -1, group: int = -1) -> None:
    """Prove a directory writable now, not at the first real write: create *probe*
    (a temporary file name in it), give it *owner* and *group* when set (not -1), write
    to it and remove it. Raises OSError, having removed the probe if it was created."""
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            if owner != -1 or group != -1:
                os.fchown(fd, owner, group)
            os.write(fd, b"ok\n")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in *directory* durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reason(exc: OSError) -> str:
    """A short, secret-free description of an OS error (no file contents, no paths twice)."""
    return exc.strerror or type(exc).__name__
