"""The status JSON of one provider: the brief one of ``/readyz``, the full one of ``/providers``.

Plain dictionaries built from a :class:`~broker.engine.provider.Provider`, described for the
OpenAPI document by :mod:`broker.web.api_models` (a test checks the two agree).
"""

from __future__ import annotations

from typing import Any

from broker.core.tokens import rfc3339
from broker.engine.provider import Provider
from broker.engine.store import StoreStatus


def brief(provider: Provider, now: float) -> dict[str, Any]:
    """The provider's state and, while its token requests fail (or its sink file cannot be
    written), the last error."""
    return {"state": provider.state(now), "error": _error_body(provider)}


def status(provider: Provider, now: float, wall: float) -> dict[str, Any]:
    """Everything ``/providers`` tells about the provider: token, refreshes, errors."""
    token = provider.token
    servable = provider.servable(now)
    error = provider.last_error
    next_at = provider.next_refresh_at
    return {
        "type": provider.kind,
        "state": provider.state(now),
        "expires_in": token.expires_in(now) if token is not None and servable else None,
        "expires_at": token.expires_at_text if token is not None else None,
        "last_refresh": rfc3339(provider.last_refresh_wall)
        if provider.last_refresh_wall is not None
        else None,
        "next_refresh_in": round(max(next_at - now, 0.0), 1) if next_at is not None else None,
        "next_refresh": rfc3339(wall + max(next_at - now, 0.0)) if next_at is not None else None,
        "refreshes": provider.refreshes,
        "failures": provider.failures,
        "consecutive_failures": provider.consecutive_failures,
        "has_refresh_token": provider.refresh_token is not None,
        "login": login_command(provider, now),
        "sink_error": provider.sink_error,
        "sinks": [
            {
                "path": str(sink.file.path),
                "format": sink.file.config.format,
                "ok": sink.error is None,
                "error": sink.error,
                "written_at": rfc3339(sink.written_wall) if sink.written_wall is not None else None,
            }
            for sink in provider.sinks
        ],
        "clock_skew": round(provider.clock_skew, 1) if provider.clock_skew is not None else None,
        "last_error": None
        if error is None
        else {
            "code": error.code,
            "message": error.message,
            "at": rfc3339(provider.last_error_wall)
            if provider.last_error_wall is not None
            else None,
        },
    }


def login_command(provider: Provider, now: float) -> str | None:
    """What a person runs to give a provider that needs one a login, else None."""
    if provider.state(now) != "needs_login":
        return None
    if provider.authorization is not None:
        return f"broker login {provider.name}"
    return f"broker login {provider.name} --refresh-token -"


def _error_body(provider: Provider) -> dict[str, Any] | None:
    error = provider.last_error
    if error is None or provider.consecutive_failures == 0:
        if provider.sink_error is not None:
            return {"code": "sink_error", "message": provider.sink_error}
        return None
    return {"code": error.code, "message": error.message}


def store_status(store: StoreStatus, *, brief: bool = False) -> dict[str, Any]:
    """Where the token store stands: its backend and, for a shared one, whether it answers,
    which leases this broker holds, its last error and the last announcement heard.
    *brief* (``/readyz``): the backend and whether it answers only."""
    if brief:
        return {"backend": store.backend, "connected": store.connected}
    return {
        "backend": store.backend,
        "where": store.where,
        "connected": store.connected,
        "leases_held": sorted(store.leases),
        "last_announcement": rfc3339(store.last_announcement_wall)
        if store.last_announcement_wall is not None
        else None,
        "last_error": None
        if store.last_error is None
        else {
            "message": store.last_error,
            "at": rfc3339(store.last_error_wall) if store.last_error_wall is not None else None,
        },
    }
