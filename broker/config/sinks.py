"""``providers.<name>.sink`` and ``providers.<name>.sinks``: the settings of a file sink
(:mod:`broker.ops.sinks` writes it).

A model of its own, so that the config imports no file writing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from broker.config.filemode import FileMode
from broker.config.listening import GroupId, UserId

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class SinkConfig(BaseModel):
    """``providers.<name>.sink`` (or one item of ``sinks``): write the provider's token to a
    file on every refresh."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    """The file to (re)write. Its directory must exist and be writable by the broker."""
    format: Literal["token", "json", "env"] = "token"
    """``token``: the bare token; ``json``: like GET /token; ``env``: KEY='value' lines."""
    mode: FileMode = 0o600
    """Permissions of the file: ``0640`` or ``0o640`` (octal, as for chmod), a string
    (``"0640"``) or a decimal int (``416``)."""
    env_prefix: str = "TOKEN"
    """Variable name prefix for ``format: env``: ``TOKEN``, ``TOKEN_TYPE``, ``TOKEN_EXPIRES_AT``."""
    owner: UserId | None = None
    """The file's owner (a user name, looked up when the config is read, or a uid); the
    broker's own by default. Set on the file before it appears under its name, so it is
    never there with another owner. Needs the broker to run as root, unless it is the
    broker's own uid (else the provider is ``degraded`` with the reason, from start)."""
    group: GroupId | None = None
    """The file's group (a group name or a gid); the broker's by default. Needs root,
    unless it is one of the broker's own groups."""

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: Path) -> Path:
        if not value.name or value.name in (".", ".."):
            msg = "must name a file, not a directory"
            raise ValueError(msg)
        return value

    @field_validator("env_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _ENV_NAME.fullmatch(value):
            msg = (
                "must be a shell variable name: letters, digits and '_', not starting with a digit"
            )
            raise ValueError(msg)
        return value

    def resolved_path(self) -> Path:
        """The file :attr:`path` names, made absolute (from the working directory) and with
        symbolic links resolved as far as they exist now: two sinks with the same one would
        overwrite each other."""
        return Path(os.path.realpath(self.path))
