"""One token request on the wire: send it, read a capped answer, place the result on our clock.

Used by the refresh engine (:mod:`broker.engine.manager`) for every token request and
by ``broker check --login`` for its one test login, so both classify an
identity provider's answer the same way. It does not retry, persist or
schedule anything, and it holds no state.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import httpx

from broker import __version__
from broker.core.clock import Clock, measure_skew
from broker.core.errors import FailureCode, FailureKind, TokenEndpointError
from broker.core.tokens import Grant
from broker.protocols import TokenProtocol

MAX_RESPONSE_BYTES = 256 * 1024
"""A token response larger than this is refused: real ones are a few KiB."""

USER_AGENT = f"credential-broker/{__version__}"
"""Sent with every token request, so identity provider operators can tell who calls."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchanged:
    """A successful token answer with the times it must be read against."""

    grant: Grant
    lifetime: float
    """Seconds the access token lives from *sent_at* (the default applied when none was given)."""
    sent_at: float
    """Monotonic time the request was sent: the token was issued no earlier."""
    sent_at_wall: float
    """The same instant in Unix seconds."""
    clock_skew: float | None
    """The identity provider's clock minus ours, from its Date header."""


async def exchange(
    client: httpx.AsyncClient,
    protocol: TokenProtocol,
    request: httpx.Request,
    *,
    refreshing: bool,
    timeout: float,  # noqa: ASYNC109  # httpx applies it per phase; not one deadline
    default_expires_in: float,
    clock: Clock,
) -> Exchanged:
    """Send *request* and parse the answer; raise TokenEndpointError on any failure."""
    # client.send() does not add the client's default headers: set ours here.
    request.headers.setdefault("User-Agent", USER_AGENT)
    # pool=None: waiting for a free connection is not the identity provider's fault.
    request.extensions["timeout"] = httpx.Timeout(timeout, pool=None).as_dict()
    try:
        # A token request is ~1 ms of CPU in a few long steps; letting the loop
        # answer waiting callers before sending and again before processing the
        # answer keeps each step short (see broker/engine/pacer.py).
        await asyncio.sleep(0)
        sent_at = clock.monotonic()
        sent_at_wall = clock.wall()
        response = await client.send(request, stream=True)
        try:
            body = await read_capped(response, MAX_RESPONSE_BYTES)
        finally:
            await response.aclose()
            release_stream(response)
        await asyncio.sleep(0)
    except httpx.TimeoutException:
        msg = f"no answer from the identity provider within {timeout:g} s"
        raise TokenEndpointError(
            msg, code=FailureCode.TIMEOUT, kind=FailureKind.TRANSIENT
        ) from None
    except httpx.HTTPError as exc:
        connect = isinstance(exc, httpx.ConnectError)
        code = FailureCode.CONNECT_ERROR if connect else FailureCode.NETWORK_ERROR
        msg = f"cannot reach the identity provider: {type(exc).__name__}"
        raise TokenEndpointError(msg, code=code, kind=FailureKind.TRANSIENT) from None
    wall = clock.wall()
    skew = measure_skew(response.headers.get("date"), wall)
    # Absolute expiries (HIRO's expires-at, a JWT's exp) are on the provider's
    # clock: read them against its time, not ours, when the two disagree. Date
    # is truncated to the second, so its clock may be up to 1 s later than it
    # says: assume so, the token then counts as expiring early, never late.
    provider_now = wall + (skew + 1.0 if skew else 0.0)
    grant = protocol.parse_response(response, body, wall_now=provider_now, refreshing=refreshing)
    lifetime = grant.lifetime if grant.lifetime is not None else default_expires_in
    if lifetime <= 0:
        msg = "the identity provider issued a token that had already expired"
        raise TokenEndpointError(
            msg, code=FailureCode.EXPIRED_ON_ARRIVAL, kind=FailureKind.TRANSIENT
        )
    return Exchanged(
        grant=grant,
        lifetime=lifetime,
        sent_at=sent_at,
        sent_at_wall=sent_at_wall,
        clock_skew=skew,
    )


_CLOSED: Final = httpx.ByteStream(b"")
"""What a read and closed response's ``stream`` becomes (:func:`release_stream`)."""


def release_stream(response: httpx.Response) -> None:
    """Drop a closed *response*'s link to the stream it was read from.

    httpx links a response and the stream that reads it both ways (a
    reference cycle), and through the stream the request, httpcore's pool
    request and its events: about 40 objects per token request that
    reference counting cannot free. The cyclic collector then frees a burst's
    worth at once, in one young collection of the whole loop: 4-9 ms with 100
    providers refreshing (``bench/refresh_noise.py``), a pause every
    ``GET /token`` then waiting in meanwhile. Without the link the response
    and everything it holds are freed as soon as the caller lets go of it.
    """
    response.stream = _CLOSED


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed *response*, refusing more than *limit* bytes."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        msg = f"token response of {declared} bytes refused (limit {limit})"
        raise TokenEndpointError(
            msg, code=FailureCode.RESPONSE_TOO_LARGE, kind=FailureKind.TRANSIENT
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            msg = f"token response larger than {limit} bytes refused"
            raise TokenEndpointError(
                msg, code=FailureCode.RESPONSE_TOO_LARGE, kind=FailureKind.TRANSIENT
            )
        chunks.append(chunk)
    return b"".join(chunks)
