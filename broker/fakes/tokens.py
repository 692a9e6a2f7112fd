"""Token bookkeeping shared by all fakes: whose a token is, when it dies, whether it was revoked.

Every grant belongs to a *family*: one login (password, client credentials or a seeded refresh
token) starts a family, and every token a refresh derives from it inherits the family id. That
is what lets a fake revoke "everything descended from this login" as servers with refresh-token
reuse detection do (RFC 9700 §4.14.2).

The store is deliberately not locked: the owning fake holds its lock around every call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import Enum


def new_family() -> str:
    """A fresh token-family id, one per login."""
    return uuid.uuid4().hex


class TokenState(Enum):
    """Why a token is or is not usable; lets the fakes pick the provider's exact error text."""

    VALID = "valid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass
class AccessGrant:
    """An issued access token. ``username`` is ``None`` for client-credentials (service) tokens."""

    token: str
    client_id: str
    username: str | None
    scope: tuple[str, ...]
    issued_at: float
    expires_at: float
    tenant: str | None = None
    revoked: bool = False
    family: str = field(default_factory=new_family)


@dataclass
class RefreshGrant:
    """An issued refresh token. ``expires_at`` is ``None`` for tokens that never expire."""

    token: str
    client_id: str
    username: str
    scope: tuple[str, ...]
    issued_at: float
    expires_at: float | None
    tenant: str | None = None
    revoked: bool = False
    # Opaque id, used by admin APIs (Hub) that address refresh tokens by id, not by value.
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    family: str = field(default_factory=new_family)
    rotated_to: str | None = None
    """The refresh token that replaced this one on rotation; set means "rotated away"."""


class TokenStore:
    """Issued access and refresh tokens, in issue order."""

    def __init__(self) -> None:
        self._access: dict[str, AccessGrant] = {}
        self._refresh: dict[str, RefreshGrant] = {}
        self.access_order: list[str] = []
        self.refresh_order: list[str] = []

    def add_access(self, grant: AccessGrant) -> AccessGrant:
        """Remember a newly issued access token."""
        self._access[grant.token] = grant
        self.access_order.append(grant.token)
        return grant

    def add_refresh(self, grant: RefreshGrant) -> RefreshGrant:
        """Remember a newly issued refresh token."""
        self._refresh[grant.token] = grant
        self.refresh_order.append(grant.token)
        return grant

    def access(self, token: str) -> AccessGrant | None:
        """The grant behind an access token, whatever its state."""
        return self._access.get(token)

    def refresh(self, token: str) -> RefreshGrant | None:
        """The grant behind a refresh token, whatever its state."""
        return self._refresh.get(token)

    def refresh_by_id(self, grant_id: str) -> RefreshGrant | None:
        """Find a refresh token by its opaque id."""
        return next((g for g in self._refresh.values() if g.id == grant_id), None)

    def refresh_grants(self) -> list[RefreshGrant]:
        """All refresh grants in issue order."""
        return [self._refresh[t] for t in self.refresh_order]

    def access_state(self, token: str, now: float) -> TokenState:
        """Classify an access token at time ``now``; it is dead from ``expires_at`` on."""
        grant = self._access.get(token)
        if grant is None:
            return TokenState.UNKNOWN
        if grant.revoked:
            return TokenState.REVOKED
        if now >= grant.expires_at:
            return TokenState.EXPIRED
        return TokenState.VALID

    def refresh_state(self, token: str, now: float) -> TokenState:
        """Classify a refresh token at time ``now``."""
        grant = self._refresh.get(token)
        if grant is None:
            return TokenState.UNKNOWN
        if grant.revoked:
            return TokenState.REVOKED
        if grant.expires_at is not None and now >= grant.expires_at:
            return TokenState.EXPIRED
        return TokenState.VALID

    def revoke_access(self, token: str) -> bool:
        """Revoke an access token; ``False`` if it was never issued."""
        grant = self._access.get(token)
        if grant is None:
            return False
        grant.revoked = True
        return True

    def revoke_refresh(self, token: str) -> bool:
        """Revoke a refresh token; ``False`` if it was never issued."""
        grant = self._refresh.get(token)
        if grant is None:
            return False
        grant.revoked = True
        return True

    def revoke_family(self, family: str) -> None:
        """Revoke every access and refresh token descended from one login."""
        for access in self._access.values():
            if access.family == family:
                access.revoked = True
        for refresh in self._refresh.values():
            if refresh.family == family:
                refresh.revoked = True

    def revoke_family_access(self, family: str, *, keep: str) -> None:
        """Revoke the family's access tokens except ``keep`` (the one just issued)."""
        for grant in self._access.values():
            if grant.family == family and grant.token != keep:
                grant.revoked = True
