"""Small HTTP helpers shared by the fakes: JSON bodies, media types, Basic and Bearer headers."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from starlette.responses import Response

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def media_type(content_type: str | None) -> str:
    """Return the bare, lower-cased media type of a ``Content-Type`` value (parameters dropped)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def json_response(
    body: Any,
    status: int = 200,
    *,
    content_type: str = JSON,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Serialise ``body`` compactly, keeping dict order, with an exact ``Content-Type`` value.

    Starlette's ``JSONResponse`` fixes the content type; the fakes need provider-specific
    spellings such as Hub's ``application/json;charset=UTF-8``.
    """
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    merged = {"content-type": content_type, **(headers or {})}
    return Response(content=content, status_code=status, headers=merged)


def raw_response(
    body: bytes | str | Mapping[str, Any],
    status: int,
    *,
    json_content_type: str = JSON,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Build a canned response: dicts become JSON, text is ``text/plain``, bytes pass through.

    A ``content-type`` in ``headers`` always wins.
    """
    extra = {k.lower(): v for k, v in (headers or {}).items()}
    if isinstance(body, Mapping):
        return json_response(
            dict(body),
            status,
            content_type=extra.pop("content-type", json_content_type),
            headers=extra,
        )
    if isinstance(body, str):
        extra.setdefault("content-type", "text/plain; charset=utf-8")
        return Response(content=body.encode("utf-8"), status_code=status, headers=extra)
    extra.setdefault("content-type", "application/octet-stream")
    return Response(content=body, status_code=status, headers=extra)


@dataclass(frozen=True)
class BasicCredentials:
    """Client id and secret taken from an ``Authorization: Basic`` header."""

    username: str
    password: str


def parse_basic(authorization: str | None, *, form_decode: bool) -> BasicCredentials | None:
    """Decode ``Authorization: Basic ...``; ``None`` if absent or malformed.

    With ``form_decode`` both halves are form-url-decoded after base64, as RFC 6749 §2.3.1
    requires; node-oauth2-server (Aerion) does not do that, so it passes ``False``.
    """
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    if form_decode:
        user, password = unquote_plus(user), unquote_plus(password)
    return BasicCredentials(user, password)


def read_basic(
    authorization: str | None,
    *,
    strict: bool,
    accepts: Callable[[BasicCredentials], bool],
) -> BasicCredentials | None:
    """Read ``Authorization: Basic ...`` as a server would; ``None`` if absent or malformed.

    The RFC 6749 §2.3.1 reading (form-decoded) always counts. Unless ``strict``, the verbatim
    reading counts too, as on the many servers that never form-decode: such a lenient server
    accepts a client whether or not it encoded its secret. Returns the first reading that
    ``accepts`` (the caller's credential check) approves, else the form-decoded one, so the
    caller's own checks then fail exactly as before.
    """
    decoded = parse_basic(authorization, form_decode=True)
    if decoded is None or strict or accepts(decoded):
        return decoded
    verbatim = parse_basic(authorization, form_decode=False)
    return verbatim if verbatim is not None and accepts(verbatim) else decoded


def has_basic_scheme(authorization: str | None) -> bool:
    """True when the ``Authorization`` header uses the Basic scheme, well-formed or not."""
    if not authorization:
        return False
    return authorization.strip().partition(" ")[0].lower() == "basic"


def bearer_token(authorization: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
