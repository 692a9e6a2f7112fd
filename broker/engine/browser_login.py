"""A person's login, from ``broker login`` to a provider that is ``ready``.

Two ways in:

* **In a browser** (``grant: authorization_code``): :meth:`BrowserLogins.begin` makes a
  login (:mod:`broker.engine.logins`) whose one-time link sends the browser to the
  identity provider's authorization endpoint (PKCE S256, a random ``state``, a ``nonce``
  with ``openid``); :meth:`BrowserLogins.finish` takes the redirect back, exchanges the
  code with the verifier, checks the ``id_token`` when one comes back, and installs the
  token like any other: its refresh token saved (state directory, shared store), the
  provider ``ready``, its next refresh planned.
* **A refresh token given by hand** (:meth:`BrowserLogins.seed`), for a provider whose only
  way in is a web login elsewhere (Aerion's SSO): checked with one refresh, then kept.

Codes, verifiers and refresh tokens never reach a log line or an error message.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import httpx

from broker.core.clock import Clock
from broker.core.errors import (
    ErrorCode,
    FailureCode,
    FailureKind,
    LoginError,
    TokenEndpointError,
)
from broker.core.sanitize import one_line, shortened
from broker.core.tokens import Grant, Token
from broker.engine.discovery import Metadata, discover
from broker.engine.id_tokens import check_id_token
from broker.engine.logins import LoginAttempt, Logins
from broker.engine.outcomes import OutcomeRecorder
from broker.engine.provider import Provider
from broker.engine.sink_keeper import SinkKeeper
from broker.engine.token_request import GrantCheck, TokenRequester
from broker.protocols.authorize import LoginSecrets, Redirect
from broker.protocols.base import jwt_expiry
from broker.protocols.device import (
    PENDING,
    SLOW_DOWN,
    SLOW_DOWN_STEP,
    DeviceAnswerError,
    DeviceAuthorization,
    read_device_authorization,
)
from broker.protocols.oauth2 import OAuth2Protocol

log = logging.getLogger("broker.login")

Spawn = Callable[[Coroutine[Any, Any, None], str], object]
"""Starts a background task the engine owns (:meth:`broker.engine.tasks.Background.spawn`)."""

SHOWN_ERROR_LENGTH = 200
"""How much of an identity provider's ``error_description`` a failed login shows."""


class BrowserLogins:
    """The logins of a person, for every provider of one engine."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        clock: Clock,
        requester: TokenRequester,
        outcomes: OutcomeRecorder,
        sinks: SinkKeeper,
        providers: Callable[[], Mapping[str, Provider]],
        spawn: Spawn,
    ) -> None:
        self._client = client
        self._clock = clock
        self._requester = requester
        self._outcomes = outcomes
        self._sinks = sinks
        self._providers = providers
        self._spawn = spawn
        self.attempts = Logins(clock)
        self._metadata: dict[str, Metadata] = {}

    async def begin(self, provider: Provider, *, default_redirect: str) -> LoginAttempt:
        """A new login for *provider* (LoginError when it has no browser login)."""
        endpoint = provider.authorization
        if endpoint is None:
            msg = (
                f"provider {provider.name!r} has no browser login (grant authorization_code);"
                " give it a refresh token instead (broker login --refresh-token -)"
            )
            raise LoginError(msg, code=ErrorCode.LOGIN_NOT_SUPPORTED)
        if not endpoint.url:
            metadata = await self._discovered(provider)
            if metadata.authorization_endpoint is None:
                msg = f"the metadata of issuer {metadata.issuer} names no authorization_endpoint"
                raise LoginError(msg, code=ErrorCode.LOGIN_FAILED)
            endpoint = dataclasses.replace(endpoint, url=metadata.authorization_endpoint)
        login = LoginSecrets.new(with_nonce=endpoint.wants_id_token)
        redirect = getattr(provider.config, "redirect_uri", None) or default_redirect
        attempt = self.attempts.begin(
            provider.name,
            login,
            redirect_uri=redirect,
            authorize_url=endpoint.request_url(login, redirect),
        )
        log.info("%s: a login was started; waiting for the browser", provider.name)
        return attempt

    async def finish(self, attempt: LoginAttempt, redirect: Redirect) -> Token:
        """Complete *attempt* with the identity provider's *redirect* (taken once, see
        :meth:`Logins.take`). Raises LoginError (``login_failed``) and marks the attempt
        failed when the identity provider refused the login or the code."""
        provider = self._providers().get(attempt.provider)
        try:
            if provider is None or not isinstance(provider.protocol, OAuth2Protocol):
                raise LoginError(  # one place turns these into the outcome
                    "the provider was removed or changed by a reload meanwhile",
                    code=ErrorCode.LOGIN_FAILED,
                )
            if redirect.error is not None:
                described = (
                    f": {shortened(one_line(redirect.error_description), SHOWN_ERROR_LENGTH)}"
                    if redirect.error_description
                    else ""
                )
                msg = f"the identity provider refused the login ({redirect.error}{described})"
                raise LoginError(msg, code=ErrorCode.LOGIN_FAILED)
            if redirect.code is None:
                msg = "the identity provider's redirect carries no code"
                raise LoginError(msg, code=ErrorCode.LOGIN_FAILED)
            await self.ensure_endpoints(provider)
            if not isinstance(provider.protocol, OAuth2Protocol):  # (mypy: replaced above)
                raise LoginError("the provider has no token endpoint", code=ErrorCode.LOGIN_FAILED)
            request = provider.protocol.code_request(
                redirect.code, attempt.secrets.verifier, attempt.redirect_uri
            )
            token = await self._install(
                provider, request, "login", check=await self._id_token_check(provider, attempt)
            )
        except LoginError as exc:
            attempt.finish("failed", str(exc))
            log.warning("%s: the login failed: %s", attempt.provider, exc)
            raise
        attempt.finish("ready", f"logged in; provider {attempt.provider!r} is ready")
        return token

    async def begin_device(self, provider: Provider) -> tuple[LoginAttempt, DeviceAuthorization]:
        """A device login (RFC 8628) for *provider*: asks the identity provider for a user
        code, then polls for the person's approval in the background (the attempt's
        outcome says how it ended). LoginError when the provider has no device endpoint."""
        protocol = provider.protocol
        if provider.authorization is None or not isinstance(protocol, OAuth2Protocol):
            msg = f"provider {provider.name!r} has no person's login (grant authorization_code)"
            raise LoginError(msg, code=ErrorCode.LOGIN_NOT_SUPPORTED)
        url = getattr(provider.config, "device_authorization_url", None)
        if url is None and getattr(provider.config, "issuer", None) is not None:
            url = (await self._discovered(provider)).device_authorization_endpoint
        await self.ensure_endpoints(provider)
        protocol = provider.protocol
        if not isinstance(protocol, OAuth2Protocol):
            raise LoginError("the provider has no token endpoint", code=ErrorCode.LOGIN_FAILED)
        if url is None:
            msg = (
                f"provider {provider.name!r} names no device authorization endpoint"
                " (device_authorization_url, or an issuer whose metadata has one)"
            )
            raise LoginError(msg, code=ErrorCode.LOGIN_NOT_SUPPORTED)
        try:
            request = protocol.device_authorization_request(url)
            request.extensions["timeout"] = httpx.Timeout(provider.config.timeout).as_dict()
            response = await self._client.send(request)
            device = read_device_authorization(response.status_code, response.content[:65536])
        except (httpx.HTTPError, DeviceAnswerError) as exc:
            why = str(exc) if isinstance(exc, DeviceAnswerError) else type(exc).__name__
            msg = f"the device authorization request failed: {protocol.scrub(why)}"
            raise LoginError(msg, code=ErrorCode.LOGIN_FAILED) from None
        attempt = self.attempts.begin(
            provider.name, LoginSecrets.new(with_nonce=False), redirect_uri="", authorize_url=""
        )
        attempt.opened = attempt.taken = True  # no browser comes back to the broker
        self._spawn(self._poll(attempt, provider, device), f"login:{provider.name}")
        log.info("%s: a device login was started; waiting for the person", provider.name)
        return attempt, device

    async def _poll(
        self, attempt: LoginAttempt, provider: Provider, device: DeviceAuthorization
    ) -> None:
        """Poll the token endpoint until the person approves, denies, or the code expires."""
        protocol = provider.protocol
        assert isinstance(protocol, OAuth2Protocol)  # noqa: S101  # begin_device checked it
        interval = device.interval
        deadline = self._clock.monotonic() + device.expires_in
        while attempt.outcome == "pending":
            await self._clock.sleep(interval)
            if self._clock.monotonic() >= deadline:
                attempt.finish("failed", "the device code expired: run broker login again")
                return
            if self._providers().get(provider.name) is not provider:
                attempt.finish("failed", "the provider was removed or changed by a reload")
                return
            started = self._clock.monotonic()
            request = protocol.device_token_request(device.device_code)
            try:
                token = await self._requester.redeem(provider, request)
            except TokenEndpointError as exc:
                if exc.code == PENDING:
                    continue
                if exc.code == SLOW_DOWN:
                    interval += SLOW_DOWN_STEP
                    continue
                attempt.finish("failed", f"the identity provider ended the login [{exc.code}]")
                log.warning("%s: the device login failed: %s", provider.name, exc.message)
                return
            self._installed(provider, token, "device login", started)
            await self._sinks.write(provider, token)
            attempt.finish("ready", f"logged in; provider {provider.name!r} is ready")

    async def finish_fragment(
        self, attempt: LoginAttempt, access_token: str | None, error: str | None
    ) -> Token:
        """Complete a HIRO UI login with what its redirect's fragment held (the token, or an
        error). Its lifetime is the token's ``exp`` when it is a JWT, else the provider's
        ``default_expires_in``; it cannot be refreshed."""
        provider = self._providers().get(attempt.provider)
        try:
            if provider is None:
                raise LoginError(  # one place turns these into the outcome
                    "the provider was removed or changed by a reload meanwhile",
                    code=ErrorCode.LOGIN_FAILED,
                )
            if error is not None or not access_token:
                why = shortened(one_line(error or "no token in the redirect"), SHOWN_ERROR_LENGTH)
                msg = f"the identity provider refused the login ({why})"
                raise LoginError(msg, code=ErrorCode.LOGIN_FAILED)
            exp = jwt_expiry(access_token)
            wall = self._clock.wall()
            lifetime = exp - wall if exp is not None else provider.config.default_expires_in
            started = self._clock.monotonic()
            try:
                token = await self._requester.install_issued(provider, access_token, lifetime)
            except TokenEndpointError as exc:
                raise LoginError(exc.message, code=ErrorCode.LOGIN_FAILED) from None
        except LoginError as exc:
            attempt.finish("failed", str(exc))
            log.warning("%s: the login failed: %s", attempt.provider, exc)
            raise
        self._installed(provider, token, "login", started)
        await self._sinks.write(provider, token)
        attempt.finish(
            "ready",
            f"logged in; provider {attempt.provider!r} is ready until the token expires"
            f" ({token.lifetime:.0f} s: this flow gives no refresh token)",
        )
        return token

    async def seed(self, provider: Provider, refresh_token: str) -> Token:
        """Take *refresh_token* (given by a person) after one refresh with it succeeded;
        LoginError (``login_failed``) when the identity provider refuses it. The refresh
        token in use before stays when it does."""
        try:
            await self.ensure_endpoints(provider)
        except TokenEndpointError as exc:
            raise LoginError(str(exc), code=ErrorCode.LOGIN_FAILED) from None
        before, private = provider.refresh_token, provider.private_refresh
        provider.refresh_token, provider.private_refresh = refresh_token, False
        request = provider.protocol.refresh_request(refresh_token)
        try:
            return await self._install(provider, request, "seeded", refreshing=True)
        except LoginError:
            if provider.refresh_token == refresh_token:
                provider.refresh_token, provider.private_refresh = before, private
            raise

    async def _install(
        self,
        provider: Provider,
        request: httpx.Request,
        reason: str,
        *,
        refreshing: bool = False,
        check: GrantCheck | None = None,
    ) -> Token:
        started = self._clock.monotonic()
        try:
            token = await self._requester.redeem(
                provider, request, refreshing=refreshing, check=check
            )
        except TokenEndpointError as exc:
            raise LoginError(
                f"the identity provider did not give a token: {exc.message} [{exc.code}]",
                code=ErrorCode.LOGIN_FAILED,
            ) from None
        self._installed(provider, token, reason, started)
        await self._sinks.write(provider, token)
        return token

    def _installed(self, provider: Provider, token: Token, reason: str, started: float) -> None:
        self._outcomes.success(provider, token, reason, self._clock.monotonic() - started)
        provider.wake.set()  # plan the next refresh from the new token

    async def _id_token_check(self, provider: Provider, attempt: LoginAttempt) -> GrantCheck | None:
        endpoint = provider.authorization
        issuer = getattr(provider.config, "issuer", None)
        if endpoint is None or not endpoint.wants_id_token or issuer is None:
            return None
        metadata = await self._discovered(provider)
        if metadata.jwks_uri is None:
            msg = f"the metadata of issuer {issuer} names no jwks_uri to check the id_token"
            raise LoginError(msg, code=ErrorCode.LOGIN_FAILED)
        jwks_uri, nonce = metadata.jwks_uri, attempt.secrets.nonce
        patience = provider.config.timeout

        async def check(grant: Grant) -> None:
            if grant.id_token is None:
                msg = "the answer to a login with scope openid carries no id_token"
                raise TokenEndpointError(
                    msg, code=FailureCode.INVALID_ID_TOKEN, kind=FailureKind.REJECTED
                )
            await check_id_token(
                self._client,
                grant.id_token,
                jwks_uri=jwks_uri,
                issuer=issuer,
                client_id=endpoint.client_id,
                nonce=nonce,
                patience=patience,
                wall=self._clock.wall,
            )

        return check

    async def ensure_endpoints(self, provider: Provider) -> None:
        """Before a token request: the token endpoint from the issuer's metadata, for a
        provider configured with an issuer and no ``token_url``. Raises TokenEndpointError
        (``discovery_failed``, transient) when the metadata cannot be read or names none."""
        protocol = provider.protocol
        if not isinstance(protocol, OAuth2Protocol) or protocol.token_url:
            return
        try:
            metadata = await self._discovered(provider)
        except LoginError as exc:
            raise TokenEndpointError(
                str(exc), code=FailureCode.DISCOVERY_FAILED, kind=FailureKind.TRANSIENT
            ) from None
        if metadata.token_endpoint is None:
            msg = f"the metadata of issuer {metadata.issuer} names no token_endpoint"
            raise TokenEndpointError(
                msg, code=FailureCode.DISCOVERY_FAILED, kind=FailureKind.MISCONFIGURED
            )
        provider.protocol = dataclasses.replace(protocol, token_url=metadata.token_endpoint)

    async def _discovered(self, provider: Provider) -> Metadata:
        issuer = getattr(provider.config, "issuer", None)
        if issuer is None:
            msg = f"provider {provider.name!r} names no issuer to read the metadata of"
            raise LoginError(msg, code=ErrorCode.LOGIN_FAILED)
        metadata = self._metadata.get(provider.name)
        if metadata is None or metadata.issuer != issuer:
            metadata = await discover(self._client, issuer, patience=provider.config.timeout)
            self._metadata[provider.name] = metadata
        return metadata
