"""Where a secret comes from: inline, an environment variable or a file.

In the YAML a secret is written as one of::

    password: {env: HIRO_PASSWORD}            # read from the environment at start
    password: {file: /run/secrets/hiro_pw}    # docker / compose secrets
    password: "inline value"                  # allowed, but keep the file private

The resolved value is held as a ``SecretStr`` so it never shows in a repr,
a log line or a validation error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr

# A file secret larger than this is certainly a mistake (a key store, a log file).
MAX_SECRET_FILE_BYTES = 64 * 1024


def resolve_secret(value: Any) -> Any:
    """Turn ``{env: NAME}`` / ``{file: PATH}`` into the secret's text.

    Raises ValueError with a message that names the variable or file but never
    the secret; pydantic turns it into an error at the right config key.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML reads `password: 12345678` as a number; it is still a secret string.
        return str(value)
    if not isinstance(value, dict):
        return value
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
        return inner if isinstance(inner, dict) else resolve_secret(inner)

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

Indirect = Annotated[str, BeforeValidator(resolve_secret)]
"""A config field that is not secret (a client id, a username) but may also come
from ``{env: NAME}`` or ``{file: PATH}``, as deployments often keep it next to its secret."""


def is_secret_validator(metadata: object) -> bool:
    """Whether *metadata* (from a field's Annotated) marks a Secret or Indirect field."""
    return isinstance(metadata, BeforeValidator) and metadata.func is resolve_secret
