"""Checking a login's OpenID Connect ``id_token`` (OIDC Core §3.1.3.7) with joserfc: its
signature against the identity provider's JWKS, then its issuer, audience, nonce and
expiry. The broker serves access tokens, not ID tokens; the check proves that the login
it just completed is the one it started, at the identity provider it was configured with.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from broker.core.errors import FailureCode, FailureKind, TokenEndpointError

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
"""Asymmetric signatures only: ``none`` and the HMAC ones (keyed with the client secret,
which a public client has not) are refused."""

LEEWAY = 60
"""Seconds of clock difference allowed on ``exp``, ``iat`` and ``nbf``."""

MAX_JWKS_BYTES = 256 * 1024


async def check_id_token(
    client: httpx.AsyncClient,
    id_token: str,
    *,
    jwks_uri: str,
    issuer: str,
    client_id: str,
    nonce: str | None,
    patience: float,
    wall: Callable[[], float],
) -> None:
    """Raise TokenEndpointError (``invalid_id_token``) unless *id_token* is sound
    (*patience*: seconds to wait for the keys; *wall*: the broker's clock, for ``exp``)."""
    try:
        response = await client.get(
            jwks_uri, timeout=patience, headers={"Accept": "application/json"}
        )
        response.raise_for_status()
        if len(response.content) > MAX_JWKS_BYTES:
            raise ValueError("too large")
        keys = KeySet.import_key_set(response.json())
    except (httpx.HTTPError, ValueError, TypeError, KeyError, JoseError) as exc:
        msg = f"cannot read the identity provider's keys at {jwks_uri} ({type(exc).__name__})"
        raise _invalid(msg) from None
    try:
        token = jwt.decode(id_token, keys, algorithms=list(ALGORITHMS))
        claims: dict[str, jwt.ClaimsOption] = {
            "iss": {"essential": True, "value": issuer},
            "aud": {"essential": True, "value": client_id},
            "exp": {"essential": True},
            "sub": {"essential": True},
        }
        if nonce is not None:
            claims["nonce"] = {"essential": True, "value": nonce}
        registry = jwt.JWTClaimsRegistry(now=lambda: int(wall()), leeway=LEEWAY, **claims)
        registry.validate(token.claims)
    except (JoseError, ValueError) as exc:
        # joserfc's messages name the claim, never its value.
        raise _invalid(f"the id_token failed its check: {type(exc).__name__}: {exc}") from None


def _invalid(message: str) -> TokenEndpointError:
    return TokenEndpointError(message, code=FailureCode.INVALID_ID_TOKEN, kind=FailureKind.REJECTED)
