"""Where a secret comes from: inline, an environment variable or a file.

In the YAML a secret is written as one of::

    password: {env: HIRO_PASSWORD}            # read from the environment at start
    password: {file: /run/secrets/hiro_pw}    # docker / compose secrets
    password: "inline value"                  # allowed, but keep the file private

Only text is taken: a YAML number, boolean, date or empty value here is an
error that says to quote it (``password: 0123`` is the number 123, and
``password: 1e3`` the number 1000.0, so the secret as written is already lost).

The resolved value is held as a ``SecretStr`` so it never shows in a repr,
a log line or a validation error.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr, ValidationInfo
from pydantic_core import PydanticCustomError

# A file secret larger than this is certainly a mistake (a key store, a log file).
MAX_SECRET_FILE_BYTES = 64 * 1024


def resolve_secret(value: Any, info: ValidationInfo) -> Any:
    """Turn ``{env: NAME}`` / ``{file: PATH}`` into the secret's text.

    Raises an error whose message names the key, variable or file but never the
    secret; pydantic turns it into an error at the right config key.
    """
    if isinstance(value, str | SecretStr):
        return value
    if isinstance(value, dict):
        return _from_source(value, info)
    error = not_text(value, f'{info.field_name or "key"}: "..."')
    if error is None:
        msg = "a secret must be a string, {env: NAME}, {file: PATH} or {value: TEXT}"
        raise ValueError(msg)
    raise error


def not_text(value: object, quoted: str) -> PydanticCustomError | None:
    """The error for a YAML number, boolean, date or null where only text is kept.

    *quoted* shows the fix (``password: "..."``). The value itself is not shown:
    it may be a secret. None if *value* is none of these.
    """
    kind = _yaml_kind(value)
    if kind is None:
        return None
    if kind == "empty":
        message = (
            "empty (YAML reads it as null); write the value, quoted ({quoted}),"
            " or leave the key out"
        )
        return PydanticCustomError("not_text", message, {"quoted": quoted})
    message = "{kind} here is not kept as written; quote it: {quoted}"
    return PydanticCustomError("not_text", message, {"kind": kind, "quoted": quoted})


def _yaml_kind(value: object) -> str | None:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, datetime.date | datetime.time):
        return "a date"
    return None


def _from_source(value: dict[Any, Any], info: ValidationInfo) -> Any:
    if set(value) == {"env"}:
        name = str(value["env"])
        found = os.environ.get(name)
        if found is None:
            msg = f"environment variable {name} is not set"
            raise ValueError(msg)
        if not found:
            msg = f"environment variable {name} is empty"
            raise ValueError(msg)
        return found
    if set(value) == {"file"}:
        return _read_secret_file(Path(str(value["file"])))
    if set(value) == {"value"}:
        inner = value["value"]
        return inner if isinstance(inner, dict) else resolve_secret(inner, info)

    msg = "a secret must be a string, {env: NAME}, {file: PATH} or {value: TEXT}"
    raise ValueError(msg)


def _read_secret_file(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_SECRET_FILE_BYTES:
            msg = f"secret file {path} is {size} bytes; expected a short secret"
            raise ValueError(msg)
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read secret file {path}: {exc.strerror or type(exc).__name__}"
        raise ValueError(msg) from None
    except UnicodeDecodeError:
        msg = f"secret file {path} is not UTF-8 text"
        raise ValueError(msg) from None
    # Files written by editors and `echo` end in a newline that is not part of the secret.
    secret = text.rstrip("\r\n")
    if not secret:
        msg = f"secret file {path} is empty"
        raise ValueError(msg)
    return secret


Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]
"""A config field that holds a secret, from inline text, env or file."""

OptionalSecret = Annotated[SecretStr | None, BeforeValidator(resolve_secret)]
"""A :data:`Secret` that may be left out. Written as null or empty it is an error,
not "unset": ``password:`` with the value forgotten should not pass silently."""

Indirect = Annotated[str, BeforeValidator(resolve_secret)]
"""A config field that is not secret (a client id, a username) but may also come
from ``{env: NAME}`` or ``{file: PATH}``, as deployments often keep it next to its secret."""

OptionalIndirect = Annotated[str | None, BeforeValidator(resolve_secret)]
"""An :data:`Indirect` that may be left out (null is an error, as for OptionalSecret)."""


def is_secret_validator(metadata: object) -> bool:
    """Whether *metadata* (from a field's Annotated) marks a Secret or Indirect field."""
    return isinstance(metadata, BeforeValidator) and metadata.func is resolve_secret
