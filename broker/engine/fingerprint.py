"""What identifies a login: the fingerprint every state file carries.

A persisted refresh token is reused only for the login it was saved for. When the
provider's configuration changes (another token URL, client or user) the fingerprint
changes, the persisted token is ignored and the next save overwrites it. Saved state files
hold these digests, so the output for an unchanged configuration must never change (a
test pins one): otherwise every broker would log in again after an upgrade.
"""

from __future__ import annotations

import hashlib

from broker.config.providers import ProviderConfig


def fingerprint(*parts: str) -> str:
    """A stable SHA-256 hex digest identifying one login, e.g. type, token URL, client id, user.

    Pass only non-secret identity parts: the digest is stored in plaintext and
    a secret with little entropy (a password) could be recovered from it by
    guessing. Parts are length-prefixed, so ``("ab", "c")`` and ``("a", "bc")``
    differ.
    """
    digest = hashlib.sha256(b"broker.state.fingerprint.v1\0")
    for part in parts:
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


LOGIN_ENDPOINT_FIELDS = (
    "url",
    "token_url",
    "auth_api",
    "flow",
    "company_url",
    # A person's login (grant: authorization_code): another issuer is another login.
    "authorize_url",
    "issuer",
)
"""The provider config fields that say where and how a login happens. Besides these the
type, ``client_id``, ``username`` and the seeded refresh token identify a login.
``tests/test_provider_types.py`` fails when a provider model gains a field that is neither
here nor listed there as not identifying the login. Fields added after the first five go
into a fingerprint only when set, so the state files saved before keep matching."""
_FIRST_ENDPOINT_FIELDS = 5


def login_fingerprint(config: ProviderConfig) -> str:
    """What identifies a login: a persisted refresh token is reused only for the same one.

    Only non-secret parts go in, plus a hash of the seeded refresh token so that
    a new seed in the config wins over an older persisted rotation of the old one.
    """
    seed = config.refresh_token.get_secret_value() if config.refresh_token else ""
    values = {key: str(getattr(config, key, "") or "") for key in LOGIN_ENDPOINT_FIELDS}
    first = [values[key] for key in LOGIN_ENDPOINT_FIELDS[:_FIRST_ENDPOINT_FIELDS]]
    later = LOGIN_ENDPOINT_FIELDS[_FIRST_ENDPOINT_FIELDS:]
    added = [f"{key}={values[key]}" for key in later if values[key]]
    return fingerprint(
        config.type,
        *first,
        config.client_id or "",
        config.username or "",
        hashlib.sha256(seed.encode()).hexdigest() if seed else "",
        *added,
    )
