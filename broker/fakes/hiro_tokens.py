"""HIRO-shaped identifiers, JWT-shaped ``_TOKEN`` values (protocol doc §1.2) and the
``/api/version`` document (§1.1).

Clients only ever base64url-decode the payload of a HIRO token (``decode_token()['data']``);
nobody checks the signature, so it is random bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any

ISSUER = "https://arago.co"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def hiro_id(seed: str) -> str:
    """A stable HIRO-style vertex id (``<25 chars>_<25 chars>``) derived from ``seed``."""
    digest = hashlib.sha256(seed.encode("utf-8")).hexdigest()
    return f"c{digest[:24]}_c{digest[24:48]}"


def make_token(*, client_id: str, username: str, issued_at: float, expires_at: float) -> str:
    """Mint a JWT-shaped token whose payload has the layout of the HIRO docs example."""
    identity_id = hiro_id(f"identity:{username}")
    header = {"alg": "RS256", "typ": "JWT"}
    payload: dict[str, Any] = {
        "exp": int(expires_at),
        "sub": identity_id,
        "iss": ISSUER,
        "aud": client_id,
        "iat": int(issued_at),
        "data": {
            "teams": [hiro_id(f"team:{username}")],
            "default-scope": hiro_id(f"scope:{username}"),
            "organization": hiro_id("organization:demo"),
            "_APPLICATION": client_id,
            "_IDENTITY_ID": identity_id,
            "_IDENTITY": username,
            "expires-at": int(expires_at * 1000),
            "created-on": int(issued_at * 1000),
            "default-team": hiro_id(f"team:{username}"),
        },
    }
    parts = (
        _b64url(json.dumps(header, separators=(",", ":")).encode()),
        _b64url(json.dumps(payload, separators=(",", ":")).encode()),
        # Random "signature": keeps every token unique even when minted in the same second.
        _b64url(secrets.token_bytes(32)),
    )
    return ".".join(parts)


def decode_payload(token: str) -> dict[str, Any]:
    """Decode the payload of a JWT-shaped token the way ``hiro_graph_client`` does."""
    part = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def version_document(auth_version: str) -> dict[str, Any]:
    """``GET /api/version``: where the auth API lives and which version it is (§1.1)."""
    return {
        "auth": {
            "endpoint": f"/api/auth/{auth_version}/",
            "version": auth_version,
            "docs": "https://developer.hiro.arago.co/api",
            "support": "supported",
            "specs": "auth.yaml",
            "protocols": "",
            "lifecycle": "stable",
        },
        "graph": {
            "endpoint": "/api/graph/7.1/",
            "version": "7.1",
            "docs": "https://developer.hiro.arago.co/api",
            "support": "supported",
            "specs": "graph.yaml",
            "protocols": "",
            "lifecycle": "stable",
        },
    }
