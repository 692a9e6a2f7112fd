"""The check of a login's id_token (broker.engine.id_tokens): signature against the JWKS,
then issuer, audience, subject, nonce and expiry on the broker's clock. Tokens signed here
with joserfc; the JWKS served through httpx.MockTransport."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from broker.core.errors import FailureCode, TokenEndpointError
from broker.engine.id_tokens import check_id_token

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000
ISSUER = "https://idp.example"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
GOOD = {"iss": ISSUER, "aud": "app", "sub": "alice", "exp": NOW + 300, "iat": NOW, "nonce": "n-1"}


def without(claim: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != claim}


def signed(claims: dict[str, Any], key: Any = KEY, alg: str = "RS256") -> str:
    return jwt.encode({"alg": alg, "kid": "k1"}, claims, key)


async def check(token: str, *, nonce: str | None = "n-1", jwks: Any = None) -> None:
    served = KeySet([KEY]).as_dict(private=False) if jwks is None else jwks

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=served)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await check_id_token(
            client,
            token,
            jwks_uri=f"{ISSUER}/jwks",
            issuer=ISSUER,
            client_id="app",
            nonce=nonce,
            patience=5.0,
            wall=lambda: float(NOW),
        )


async def test_a_sound_id_token_passes() -> None:
    await check(signed(GOOD))
    await check(signed({**GOOD, "exp": NOW - 30}))  # within the leeway


@pytest.mark.parametrize(
    ("token", "nonce", "why"),
    [
        pytest.param(signed({**GOOD, "aud": "other"}), "n-1", "aud", id="audience"),
        pytest.param(signed({**GOOD, "iss": "https://evil"}), "n-1", "iss", id="issuer"),
        pytest.param(signed(GOOD), "n-2", "nonce", id="nonce"),
        pytest.param(signed(without("nonce")), "n-1", "nonce", id="no-nonce"),
        pytest.param(signed({**GOOD, "exp": NOW - 120}), "n-1", "xpired", id="expired"),
        pytest.param(signed(without("exp")), "n-1", "exp", id="no-exp"),
        pytest.param(signed(without("sub")), "n-1", "sub", id="no-sub"),
        pytest.param(signed({**GOOD, "iat": NOW + 600}), "n-1", "future", id="issued-later"),
        pytest.param(signed(GOOD, OTHER_KEY), "n-1", "ignature", id="another-key"),
        pytest.param(signed(GOOD, OctKey.generate_key(256), "HS256"), "n-1", "lgorithm", id="hmac"),
        pytest.param("not.a.jwt", "n-1", "", id="garbage"),
    ],
)
async def test_an_unsound_id_token_is_refused(token: str, nonce: str, why: str) -> None:
    with pytest.raises(TokenEndpointError) as refused:
        await check(token, nonce=nonce)
    assert refused.value.code == FailureCode.INVALID_ID_TOKEN
    assert why.lower() in refused.value.message.lower()
    assert token not in refused.value.message


async def test_keys_that_cannot_be_read_are_a_refusal() -> None:
    with pytest.raises(TokenEndpointError) as refused:
        await check(signed(GOOD), jwks={"keys": "nope"})
    assert "cannot read the identity provider's keys" in refused.value.message
