"""An identity provider's metadata, read from its issuer: OpenID Connect Discovery 1.0
(``/.well-known/openid-configuration``), else RFC 8414
(``/.well-known/oauth-authorization-server``). Read when a person's login starts, for the
endpoints the configuration leaves out and the keys an ``id_token`` is checked with.

The metadata's ``issuer`` must be the configured one, exactly (RFC 8414 §3.3, OIDC
Discovery §4.3): metadata served for another issuer could point the login elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from broker.core.errors import ErrorCode, LoginError
from broker.core.sanitize import shortened

MAX_METADATA_BYTES = 256 * 1024

ACCEPT_JSON = {"Accept": "application/json"}

WELL_KNOWN = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")


@dataclass(frozen=True)
class Metadata:
    issuer: str
    authorization_endpoint: str | None
    token_endpoint: str | None
    jwks_uri: str | None
    device_authorization_endpoint: str | None


async def discover(client: httpx.AsyncClient, issuer: str, *, patience: float) -> Metadata:
    """The metadata of *issuer*; LoginError (``login_failed``) when none can be read."""
    base = issuer.rstrip("/")
    problems: list[str] = []
    for path in WELL_KNOWN:
        url = base + path
        try:
            response = await client.get(
                url, timeout=patience, headers={"Accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            problems.append(f"{path}: {type(exc).__name__}")
            continue
        if response.status_code != 200:
            problems.append(f"{path}: HTTP {response.status_code}")
            continue
        data = _json_object(response.content[:MAX_METADATA_BYTES])
        if data is None:
            problems.append(f"{path}: not a JSON object")
            continue
        if data.get("issuer") != issuer:
            # Shown shortened: a metadata document is the IdP's text, not a secret.
            shown = shortened(str(data.get("issuer")), 80)
            problems.append(f"{path}: its issuer is {shown!r}, not the configured one")
            continue
        return Metadata(
            issuer=issuer,
            authorization_endpoint=_url(data, "authorization_endpoint"),
            token_endpoint=_url(data, "token_endpoint"),
            jwks_uri=_url(data, "jwks_uri"),
            device_authorization_endpoint=_url(data, "device_authorization_endpoint"),
        )
    msg = f"cannot read the metadata of issuer {issuer}: {'; '.join(problems)}"
    raise LoginError(msg, code=ErrorCode.LOGIN_FAILED)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _url(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value.startswith(("https://", "http://")) else None
