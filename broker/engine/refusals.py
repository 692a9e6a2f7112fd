"""What a caller is told when no token can be had for it now: the provider needs a login
or has none (503), callers asked too often (429), or ``min_valid`` cannot be met (422)."""

from __future__ import annotations

from broker.core.errors import ErrorCode, TokenUnavailableError
from broker.engine.provider import Provider


def unavailable(provider: Provider, *, retry_after: float) -> TokenUnavailableError:
    error = provider.last_error
    if provider.needs_login:
        reason = error.message if error is not None else "a new login is needed"
        return TokenUnavailableError(
            f"provider {provider.name!r} needs a new login: {reason}",
            retry_after=retry_after,
            code=ErrorCode.NEEDS_LOGIN,
        )
    detail = f": {error.message} [{error.code}]" if error is not None else ""
    return TokenUnavailableError(
        f"provider {provider.name!r} has no valid token{detail}",
        retry_after=retry_after,
    )


def rate_limited(provider: Provider, wait: float) -> TokenUnavailableError:
    policy = provider.policy
    msg = (
        f"provider {provider.name!r}: callers asked for more than {policy.caller_burst} new"
        f" tokens in a row (one more every {policy.caller_interval:g} s); the current token"
        " is still valid"
    )
    return TokenUnavailableError(msg, retry_after=wait, code=ErrorCode.REFRESH_RATE_LIMITED)


def unsatisfiable(message: str) -> TokenUnavailableError:
    return TokenUnavailableError(message, retry_after=0, code=ErrorCode.MIN_VALID_UNSATISFIABLE)
