"""The format of one state file: its JSON document, sealed when a key is configured, and
every check a file must pass before its refresh token is used. No I/O: the state
directory (:mod:`broker.engine.state`) reads and writes the bytes, and the Redis store
(:mod:`broker.engine.redis_store`) keeps its values in the same documents
(:meth:`StateCodec.seal`, :meth:`StateCodec.open`), sealed with the same key.

A state file is::

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
The fingerprint (:mod:`broker.engine.fingerprint`) names the login the token belongs to.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from broker.core.errors import BrokerError

VERSION = 1
"""The ``version`` written to every state file; other versions are refused."""

MAX_STATE_FILE_BYTES = 64 * 1024
"""A state file larger than this is corrupt: a real one is well under 4 KiB."""

REFRESH_TOKEN = "refresh_token"  # noqa: S105 (a field name, not a secret)
"""The field a state file keeps its secret under."""


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


class StateCodec:
    """State files to bytes and back: sealed with *key* (a Fernet key) when given, else
    plaintext. Raises StateError when *key* is not a Fernet key."""

    def __init__(self, key: bytes | None) -> None:
        self._fernet: Fernet | None = None
        if key is not None:
            try:
                self._fernet = Fernet(key)
            except (ValueError, TypeError):
                msg = (
                    "the state encryption key is not a valid Fernet key (32 bytes, url-safe base64)"
                )
                raise StateError(msg) from None

    def encode(self, provider: str, fingerprint: str, refresh_token: str, saved_at: float) -> bytes:
        """The whole file that saves *refresh_token* for *provider*'s login *fingerprint*."""
        return self.seal(provider, fingerprint, REFRESH_TOKEN, refresh_token, saved_at)

    def decode(
        self, path: Path, provider: str, fingerprint: str, raw: bytes
    ) -> PersistedState | None:
        """Validate the file *raw* read from *path* (named in messages) for *provider*.

        None when it belongs to another login (the fingerprint differs), StateError when
        it is corrupt.
        """
        opened = self.open(f"state file {path}", provider, fingerprint, REFRESH_TOKEN, raw)
        if opened is None:
            return None
        secret, saved_at = opened
        return PersistedState(refresh_token=secret, saved_at=saved_at)

    def seal(
        self, provider: str, fingerprint: str, field: str, secret: str, saved_at: float
    ) -> bytes:
        """A document that keeps *secret* under the name *field* for *provider*'s login
        *fingerprint* (a state file's is ``refresh_token``; a shared store keeps other
        values, such as the current access token, the same way). Every one of these is
        bound into the sealed payload, so a document moved to another provider, login or
        field does not open."""
        document: dict[str, Any] = {
            "version": VERSION,
            "provider": provider,
            "fingerprint": fingerprint,
            "saved_at": saved_at,
        }
        if self._fernet is None:
            document[field] = secret
        else:
            payload = {
                "provider": provider,
                "fingerprint": fingerprint,
                "saved_at": saved_at,
                field: secret,
            }
            sealed = self._fernet.encrypt(json.dumps(payload).encode("utf-8"))
            document["encrypted"] = sealed.decode("ascii")
        return (json.dumps(document, indent=1) + "\n").encode("utf-8")

    def open(
        self, where: str, provider: str, fingerprint: str, field: str, raw: bytes
    ) -> tuple[str, float] | None:
        """The secret kept under *field* in the document *raw* and its ``saved_at``; *where*
        names the document in messages (``state file /var/lib/...``).

        None when it belongs to another login (the fingerprint differs), StateError when
        it is corrupt.
        """

        def corrupt(why: str) -> StateError:
            return StateError(f"{where} is unusable: {why}")

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
        plain = document.get(field)
        sealed = document.get("encrypted")
        if (plain is None) == (sealed is None):
            raise corrupt(f"expected exactly one of {field} and encrypted")
        if stored_fingerprint != fingerprint:
            return None
        if self._fernet is None:
            if sealed is not None:
                raise corrupt("encrypted, but no state encryption key is configured")
            if not isinstance(plain, str) or not plain:
                raise corrupt(f"{field} is not a non-empty string")
            return plain, saved_at
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
        secret = opened.get(field)
        if not isinstance(secret, str) or not secret:
            raise corrupt(f"the encrypted {field} is not a non-empty string")
        return secret, saved_at


def _timestamp(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None
