"""OpenID Connect ID tokens: RS256 JWTs (RFC 7515, RFC 7519) signed with a key the fake makes.

The key is an RSA 2048 key generated on first use (about 0.1 s, so fakes that never issue an
ID token never pay for it), one per fake, as one per issuer. It is signed with
``cryptography``, a dependency of the broker already; clients verify it against the JWKS
(RFC 7517) the fake serves, whose key id is the key's RFC 7638 thumbprint.

Claims follow OpenID Connect Core 1.0 §2 and §3.1.3.6: ``iss``, ``sub``, ``aud`` (the client
id), ``exp``, ``iat``, ``auth_time``, ``nonce`` when the authorization request had one, and
``at_hash`` (the left half of SHA-256 of the access token issued with it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ALGORITHM = "RS256"


def b64url(raw: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def at_hash(access_token: str) -> str:
    """OIDC Core §3.1.3.6: the left-most half of SHA-256 of the access token, base64url."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return b64url(digest[: len(digest) // 2])


class IdTokenSigner:
    """Signs ID tokens with a lazily generated RSA key and publishes its public half."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: rsa.RSAPrivateKey | None = None
        self._jwk: dict[str, str] | None = None

    def _ensure(self) -> tuple[rsa.RSAPrivateKey, dict[str, str]]:
        with self._lock:
            if self._key is None or self._jwk is None:
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                numbers = key.public_key().public_numbers()
                members = {
                    "e": b64url(_int_bytes(numbers.e)),
                    "kty": "RSA",
                    "n": b64url(_int_bytes(numbers.n)),
                }
                # RFC 7638: the thumbprint hashes the required members, sorted, no whitespace.
                kid = b64url(hashlib.sha256(_json(members)).digest())
                self._key = key
                self._jwk = {**members, "kid": kid, "use": "sig", "alg": ALGORITHM}
            return self._key, self._jwk

    @property
    def kid(self) -> str:
        """The key id every ID token names in its header."""
        return self._ensure()[1]["kid"]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JSON Web Key Set with the public key: ``{"keys": [{kty, n, e, kid, use, alg}]}``."""
        return {"keys": [dict(self._ensure()[1])]}

    def sign(self, claims: dict[str, Any]) -> str:
        """``claims`` as a compact RS256 JWS."""
        key, jwk = self._ensure()
        header = {"alg": ALGORITHM, "kid": jwk["kid"], "typ": "JWT"}
        signing_input = f"{b64url(_json(header))}.{b64url(_json(claims))}".encode("ascii")
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"


def id_token_claims(
    *,
    issuer: str,
    subject: str,
    client_id: str,
    issued_at: float,
    expires_at: float,
    auth_time: float,
    nonce: str | None,
    access_token: str | None,
) -> dict[str, Any]:
    """The claims of an ID token issued at the token endpoint (times in whole seconds)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": client_id,
        "exp": int(expires_at),
        "iat": int(issued_at),
        "auth_time": int(auth_time),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    if access_token is not None:
        claims["at_hash"] = at_hash(access_token)
    return claims
