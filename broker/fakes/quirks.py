"""The "wider world" switches (:class:`WorldQuirks`): behaviours of real servers that the
fakes leave off by default because they are unkind to clients, and the named worlds
(:data:`WORLD_MODES`) tests run in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict


@dataclass(frozen=True)
class WorldQuirks:
    """Unkind behaviours of real servers; all off by default. Pass as ``quirks=`` to any fake.

    A fake ignores a switch that makes no sense for the provider it models (see the fakes'
    package documentation for the table).
    """

    revoke_previous_access_on_refresh: bool = False
    """A refresh kills the access tokens issued earlier to the same login (token family)."""
    reuse_revokes_family: bool = False
    """A rotated-away refresh token presented again kills its whole family (RFC 9700 §4.14.2)."""
    echo_credentials_in_errors: bool = False
    """Token-endpoint errors quote the request's Authorization header and raw body."""
    basic_form_encoded: bool = False
    """Read Basic client credentials strictly per RFC 6749 §2.3.1 (form-decoded only)."""
    trailing_slash_token_path: bool = False
    """Serve the token endpoint with a trailing slash only (Django style); no slash → 404."""


class QuirkOptions(TypedDict, total=False):
    """The :class:`WorldQuirks` switches as keyword arguments; each overrides ``quirks=``."""

    revoke_previous_access_on_refresh: bool
    reuse_revokes_family: bool
    echo_credentials_in_errors: bool
    basic_form_encoded: bool
    trailing_slash_token_path: bool


NO_QUIRKS = WorldQuirks()

WORLD_MODES: dict[str, WorldQuirks] = {
    "kind": NO_QUIRKS,
    "revoke_on_refresh": WorldQuirks(revoke_previous_access_on_refresh=True),
    "reuse_detection": WorldQuirks(reuse_revokes_family=True),
    "strict_basic": WorldQuirks(basic_form_encoded=True),
    "echo_errors": WorldQuirks(echo_credentials_in_errors=True),
    "trailing_slash": WorldQuirks(trailing_slash_token_path=True),
    "hostile": WorldQuirks(
        revoke_previous_access_on_refresh=True,
        reuse_revokes_family=True,
        echo_credentials_in_errors=True,
        basic_form_encoded=True,
        trailing_slash_token_path=True,
    ),
}
"""Named worlds for tests to parametrize over: "kind" is every switch off, "hostile" all on."""
