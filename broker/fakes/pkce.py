"""PKCE (RFC 7636): what a code request may carry, and whether a verifier matches it."""

from __future__ import annotations

import hashlib
import re
import secrets

from broker.fakes.idtoken import b64url

CODE_CHALLENGE_METHODS = ("S256", "plain")

# §4.1: 43 to 128 unreserved characters; an S256 challenge is 32 bytes, base64url (§4.2).
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")


def s256(verifier: str) -> str:
    """§4.2: ``BASE64URL(SHA256(ASCII(code_verifier)))``."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def challenge_problem(
    challenge: str | None, method: str | None, *, required: bool, allow_plain: bool
) -> str | None:
    """Why an authorization request's PKCE parameters are refused (§4.4.1), or ``None``.

    A missing method means ``plain`` (§4.3), so it is refused unless ``allow_plain``.
    """
    if not challenge:
        if method:
            return "code_challenge_method without code_challenge"
        return "code_challenge is required (PKCE, RFC 7636)" if required else None
    method = method or "plain"
    if method not in CODE_CHALLENGE_METHODS or (method == "plain" and not allow_plain):
        return f"transform algorithm not supported: {method}"
    pattern = _S256_CHALLENGE if method == "S256" else _VERIFIER
    return None if pattern.fullmatch(challenge) else "code_challenge is malformed"


def verifier_problem(challenge: str | None, method: str | None, verifier: str | None) -> str | None:
    """Why a token request's ``code_verifier`` does not redeem a code (§4.6), or ``None``."""
    if challenge is None:
        # OAuth 2.1 §4.1.3: a verifier for a code without a challenge is a PKCE downgrade.
        return None if verifier is None else "code_verifier given, but no code_challenge was"
    if not verifier:
        return "Missing code_verifier"
    if not _VERIFIER.fullmatch(verifier):
        return "code_verifier is malformed"
    expected = s256(verifier) if method == "S256" else verifier
    if not secrets.compare_digest(expected, challenge):
        return "code_verifier does not match the code_challenge"
    return None
