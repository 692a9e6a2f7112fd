"""What a token answer is made of, for the FastAPI routes and the fast path alike.

Both build every token answer here, so the two paths cannot drift apart: the
body, the media type and the headers (``ETag`` naming the token,
``X-Broker-Refresh-Failed`` while the last refresh failed). The audit line and the
metric of a token handed out are :meth:`broker.web.runtime.Runtime.served`.
"""

from __future__ import annotations

from broker.core.tokens import Token
from broker.engine.provider import Provider

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
REFRESH_FAILED_HEADER = "X-Broker-Refresh-Failed"
"""Set on a token answer while the last refresh attempt failed; its value is the error code."""
RAW_MEDIA_TYPE = "text/plain; charset=utf-8"
JSON_MEDIA_TYPE = "application/json"


def accepts_raw(accept: str | None) -> bool:
    """True when the Accept header asks for the bare token (text/plain, not JSON)."""
    return accept is not None and "text/plain" in accept and "json" not in accept


def refresh_failure(provider: Provider) -> str | None:
    """The error code to show while the provider's last token request failed, else None."""
    error = provider.last_error
    if provider.consecutive_failures and error is not None:
        return error.code
    return None


def token_headers(token: Token, failed: str | None) -> dict[str, str]:
    """The headers of every token answer: no caching, the token's ETag, a failed refresh."""
    headers = {**NO_STORE, "ETag": token.etag}
    if failed is not None:
        # Still valid, but the last refresh failed: callers may want to know.
        headers[REFRESH_FAILED_HEADER] = failed
    return headers


def token_payload(
    token: Token, now: float, raw: bool, provider: Provider
) -> tuple[bytes, str, dict[str, str]]:
    """Body, media type and headers of a token answer."""
    headers = token_headers(token, refresh_failure(provider))
    if raw:
        return token.access_token.encode(), RAW_MEDIA_TYPE, headers
    return token.json_body(now), JSON_MEDIA_TYPE, headers
