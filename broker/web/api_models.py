"""Response shapes, for the OpenAPI document only.

The handlers build their JSON directly (the token route is the hot path);
these models describe it, and a test checks the two agree.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from broker.core.errors import STATUS, ErrorCode


class TokenBody(BaseModel):
    access_token: str = Field(
        description="The bearer token to send as `Authorization: Bearer ...`."
    )
    token_type: str = Field("Bearer", description="Always `Bearer`.")
    expires_in: int = Field(
        description="Whole seconds the token stays valid from now (rounded down; at least"
        " `serve_min_remaining`, 1 by default: a token with less left is never served)."
    )
    expires_at: str = Field(
        description="When it expires, RFC 3339 UTC to the millisecond; never served at or after it."
    )
    etag: str = Field(
        description="Names this token (a keyed hash, never the token), as the `ETag` header."
        " After an API refused the token, send it as `If-Match` to `POST .../refresh`."
    )


class ErrorBody(BaseModel):
    error: str = Field(description=f"Stable code: {', '.join(ErrorCode)}, http_<status>.")
    message: str = Field(description="What went wrong, for humans. Never contains a secret.")


class ProviderError(BaseModel):
    code: str
    message: str


class ProviderBrief(BaseModel):
    state: str = Field(
        description="starting (no outcome yet), ready, degraded (serving, last refresh"
        " failed), expired (the token ran out, a request is under way), failing (no token,"
        " transient errors), rejected (credentials refused), misconfigured (no token"
        " endpoint at the URL) or needs_login."
    )
    error: ProviderError | None


class StoreBrief(BaseModel):
    backend: str = Field(
        description="redis (shared by replicas), state_dir (this broker's own directory) or"
        " memory (nothing kept across restarts)."
    )
    connected: bool | None = Field(
        description="Whether the last command to a shared store succeeded; null for a local"
        " store, and before the first command."
    )


class StoreError(BaseModel):
    message: str
    at: str | None


class StoreStatus(StoreBrief):
    where: str | None = Field(description="Redis at host:port/db (never the URL: no password).")
    leases_held: list[str] = Field(
        description="Providers whose lease this broker holds now (it is talking to their"
        " identity providers)."
    )
    last_announcement: str | None = Field(
        description="When another broker's new token was last announced to this one."
    )
    last_error: StoreError | None


class ReadyBody(BaseModel):
    ready: bool
    providers: dict[str, ProviderBrief] | None = Field(
        None, description="Only for callers allowed to read status (all, without clients)."
    )
    store: StoreBrief | None = Field(
        None,
        description="Only for callers allowed to read status. Readiness does not depend"
        " on it: tokens are served from memory while a shared store is out.",
    )


class SinkStatus(BaseModel):
    path: str = Field(description="The file, as configured.")
    format: str = Field(description="token, json or env.")
    ok: bool = Field(description="False while the file cannot be written (see `error`).")
    error: str | None = Field(
        description="Why the newest token could not be written to the file (or, from the"
        " start check, why it cannot be); it names the file."
    )
    written_at: str | None = Field(
        description="When the token now in the file was written; null before the first"
        " write and once the file was removed (its token expired, none replaced it)."
    )


class ProviderStatus(BaseModel):
    type: str
    state: str
    expires_in: int | None
    expires_at: str | None
    last_refresh: str | None
    next_refresh_in: float | None
    next_refresh: str | None
    refreshes: int
    failures: int
    consecutive_failures: int
    has_refresh_token: bool
    sink_error: str | None = Field(
        description="Why a sink file cannot be written, while one cannot (the provider is"
        " then `degraded`): the first failing sink's reason, which names its file."
    )
    sinks: list[SinkStatus] = Field(
        description="Each sink file (`sink` or `sinks` in the config), in the order"
        " configured; empty without sinks."
    )
    login: str | None = Field(
        description="While the provider needs a person's login: the command that gives it one"
        " (`broker login <provider>`, with `--refresh-token -` where it has no browser login)."
    )
    clock_skew: float | None = Field(
        description="The identity provider's clock minus ours, seconds, from its Date header"
        " (0 when within 2 s); absolute expiries are read on its clock."
    )
    last_error: dict[str, Any] | None


class ProvidersBody(BaseModel):
    providers: dict[str, ProviderStatus]
    store: StoreStatus


WHAT_STATUS_MEANS: dict[int, str] = {
    401: "Clients are configured and no valid key was sent",
    403: "The client may not read this provider, or the request looks like it came from a"
    " browser, a proxy or another host",
    404: "No such provider, route or login",
    409: "The provider has no login of that kind",
    410: "The login link or callback was used, or has expired",
    412: "`security.require_header` is set and the request lacks it",
    422: "A bad parameter, or a `min_valid` the provider's tokens cannot meet",
    429: "Callers asked this provider for new tokens too often; see `Retry-After`",
    431: "Request headers over 16 KiB",
    502: "The identity provider refused the login",
    503: "No servable token now; see `Retry-After`",
}
"""What each error status means, in the OpenAPI document (the codes are added from STATUS)."""

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until asking again can help",
        "schema": {"type": "integer"},
    }
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers at *statuses*, each naming the codes answered with it (STATUS)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        codes = ", ".join(f"`{code}`" for code in ErrorCode if STATUS[code] == status)
        response: dict[str, Any] = {
            "model": ErrorBody,
            "description": f"{WHAT_STATUS_MEANS[status]} ({codes})",
        }
        if status in (429, 503):
            response["headers"] = RETRY_AFTER
        responses[status] = response
    return responses


ERROR_RESPONSES = error_responses(401, 403, 404, 412, 422, 429, 431, 503)
"""The error answers of the token routes."""

TOKEN_HEADERS: dict[str, dict[str, Any]] = {
    "ETag": {
        "description": "Names this token (a keyed hash, never the token); send it back as"
        " `If-Match` to `POST /token/{provider}/refresh` when your API refused it",
        "schema": {"type": "string"},
    },
    "Cache-Control": {"description": "Always `no-store`", "schema": {"type": "string"}},
    "X-Broker-Refresh-Failed": {
        "description": "Present while the last refresh failed and this (still valid) token"
        " is served: that failure's code (`timeout`, `invalid_grant`, `store_unavailable` ...)",
        "schema": {"type": "string"},
    },
}
"""The headers of every token answer."""

TOKEN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": TokenBody, "content": {"text/plain": {}}, "headers": TOKEN_HEADERS},
    **ERROR_RESPONSES,
}
"""The answers of the token routes."""
