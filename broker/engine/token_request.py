"""One token request for a provider, from the choice of grant to a Token on our clock.

The refresh token first, then the primary login (password, client credentials) if it is
refused; held under the store's lease; within the request slots (all providers, and each
identity provider's share); a rotated refresh token saved before anything relies on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable

import httpx

from broker.core.clock import Clock
from broker.core.errors import FailureCode, FailureKind, TokenEndpointError
from broker.core.tokens import Grant, Token, place_token
from broker.engine.exchange import exchange
from broker.engine.provider import Provider, may_go_alone
from broker.engine.store import Replacing, StoreConflict, Stored, StoreError, TokenStore
from broker.ops.metrics import Metrics

log = logging.getLogger("broker.manager")

GrantCheck = Callable[[Grant], Awaitable[None]]
"""Checks a token answer before it is kept; raises TokenEndpointError to refuse it."""


class TokenRequester:
    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        clock: Clock,
        store: TokenStore,
        metrics: Metrics,
        max_concurrent_requests: int,
    ) -> None:
        self._client = client
        self._clock = clock
        self._store = store
        self.metrics = metrics
        # Names tokens in ETags; random per process, so a tag says nothing about the token.
        self._etag_key = secrets.token_bytes(32)
        self._sending = asyncio.Semaphore(max_concurrent_requests)
        # A slow or hanging identity provider may hold only its share of the slots, so
        # the others keep refreshing on time.
        self._per_host_limit = max(1, max_concurrent_requests // 4)
        self._sending_to: dict[str, asyncio.Semaphore] = {}

    async def obtain(self, provider: Provider) -> Token:
        """A new token for *provider*; raises TokenEndpointError."""
        try:
            return await self._obtain(provider)
        except StoreError as exc:
            # No request was sent: without the lease, or without the refresh token the
            # store holds, one could race another broker's. (A failed save is not one: the
            # token is obtained, see _persist.)
            if self._store.shared and may_go_alone(provider, self._clock.monotonic()):
                return await self._alone(provider, exc)
            raise _unavailable(exc) from None

    prepare: Callable[[Provider], Awaitable[None]] | None = None
    """Runs before every token request: fills in what the config leaves to discovery (the
    token endpoint of an issuer; :meth:`BrowserLogins.ensure_endpoints`). May raise
    TokenEndpointError."""

    async def _obtain(self, provider: Provider) -> Token:
        if self.prepare is not None:
            await self.prepare(provider)
        # One actor at a time talks to the identity provider for this login (in one
        # broker, single flight already makes it so; a shared store makes it so across).
        async with self._store.lease(provider.name):
            # Under a shared store another broker may have rotated the refresh token, or
            # obtained a token, since this one last looked: look again before every
            # request, inside the lease. A store of this broker's own changes only by it:
            # once is enough (no read per refresh).
            if not provider.resumed or self._store.shared:
                stored = await self._store.load(provider.name, provider.login_id)
                provider.store_holds = stored.holds
                published = self.adopt(provider, stored)
                if published is not None:
                    return published
            presented = provider.refresh_token
            token = await self._request_token(provider)
            if (
                self._store.shared
                and provider.refresh_token is not None
                and provider.refresh_token == presented
                and provider.refresh_token != provider.store_holds
            ):
                # Not rotated, and the store does not hold it: Redis lost it (restarted
                # empty), or it is our own from a login made alone. Give it to the others.
                await self._persist(provider, provider.refresh_token)
            await self._store.publish(provider.name, provider.login_id, token)
            return token

    async def _alone(self, provider: Provider, cause: StoreError) -> Token:
        """A token obtained without the shared store, which cannot be used (*cause*), as the
        provider's token runs out: with our own refresh token if we have one (no other
        broker does), else with the primary grant. Never with the shared refresh token: the
        others may present it as soon as the store is back, and one of the two would then
        have been a reuse."""
        log.warning(
            "%s: the shared store cannot be used (%s) and the token runs out: logging in"
            " without it",
            provider.name,
            cause,
        )
        self.metrics.store.alone_login(provider.name)
        protocol = provider.protocol
        own = provider.refresh_token if provider.private_refresh else None
        if own is not None:
            try:
                return await self._send(provider, protocol.refresh_request(own), True, alone=True)
            except TokenEndpointError as exc:
                if not exc.refresh_token_rejected:
                    raise
        return await self._send(provider, protocol.login_request(), False, alone=True)

    def adopt(self, provider: Provider, stored: Stored) -> Token | None:
        """Take from *stored* (what the store holds for this login) its refresh token when
        it is newer than ours, and return its published token when it may be served and is
        newer than ours (else None). Inside the lease before a request, and when another
        broker's token is announced (the engine installs the token returned)."""
        first = not provider.resumed
        provider.resumed = True
        # After a save that failed, ours is newer than the store's (what ours rotated
        # from, dead at the identity provider): keep ours until a save succeeds. Our own
        # (private) one is not: the store's is the one every other broker uses.
        ours_unsaved = provider.persist_error is not None and not provider.private_refresh
        if stored.refresh_token is not None and (
            first or (stored.refresh_token != provider.refresh_token and not ours_unsaved)
        ):
            # A saved refresh token is newer than any seed: it is what the seed (or an
            # earlier login) rotated into; in a shared store, what another broker's did.
            provider.refresh_token = stored.refresh_token
            provider.private_refresh = False
            if first:
                where = "the shared store" if self._store.shared else "the state directory"
                log.info("%s: resuming from the refresh token saved in %s", provider.name, where)
            else:
                log.info("%s: taking the refresh token another broker saved", provider.name)
        return self._newer(provider, stored.token)

    def _newer(self, provider: Provider, published: Token | None) -> Token | None:
        """*published* (another broker's token) with our serving floor, if it may be served
        now and is newer than ours; else None."""
        if published is None:
            return None
        theirs = dataclasses.replace(
            published, serve_min_remaining=provider.policy.serve_min_remaining
        )
        ours = provider.token
        # Wall-clock expiries, carried verbatim through the store: compared on the monotonic
        # clock, our own token read back could look a microsecond newer than itself.
        if not theirs.servable(self._clock.monotonic()) or (
            ours is not None
            and (
                theirs.access_token == ours.access_token
                or theirs.expires_at_wall <= ours.expires_at_wall
            )
        ):
            return None
        log.info(
            "%s: taking the token another broker obtained (valid %.0f s more)",
            provider.name,
            theirs.remaining(self._clock.monotonic()),
        )
        return theirs

    async def _request_token(self, provider: Provider) -> Token:
        protocol = provider.protocol
        refresh_token = provider.refresh_token
        if refresh_token is not None:
            try:
                return await self._send(provider, protocol.refresh_request(refresh_token), True)
            except TokenEndpointError as exc:
                if not exc.refresh_token_rejected:
                    raise
                log.warning(
                    "%s: refresh token rejected (%s)%s",
                    provider.name,
                    exc.code,
                    "; logging in again" if protocol.can_login else "",
                )
                if provider.refresh_token == refresh_token:
                    provider.refresh_token = None
                    await self._forget(provider)
                if not protocol.can_login:
                    provider.needs_login = True
                    msg = (
                        f"the refresh token was rejected ({exc.code}) and no password or"
                        " client credentials are configured: a new login is needed"
                    )
                    raise TokenEndpointError(
                        msg,
                        code=FailureCode.NEEDS_LOGIN,
                        kind=FailureKind.REJECTED,
                        status=exc.status,
                    ) from None
        if not protocol.can_login:
            provider.needs_login = True
            if provider.authorization is not None:
                msg = f"a person's login is needed: run broker login {provider.name}"
            else:
                msg = "no refresh token left and no password or client credentials configured"
            raise TokenEndpointError(msg, code=FailureCode.NEEDS_LOGIN, kind=FailureKind.REJECTED)
        return await self._send(provider, protocol.login_request(), False)

    async def install_issued(self, provider: Provider, access_token: str, lifetime: float) -> Token:
        """A token a person's browser brought back itself (HIRO's UI flow: no token request,
        no refresh token), placed on our clock from now and published like any other."""
        now = self._clock.monotonic()
        if lifetime <= provider.policy.serve_min_remaining:
            msg = f"the token the browser brought lives {lifetime:.1f} s"
            raise TokenEndpointError(
                msg, code=FailureCode.EXPIRED_ON_ARRIVAL, kind=FailureKind.TRANSIENT
            )
        token = place_token(
            access_token,
            sent_at=now,
            sent_at_wall=self._clock.wall(),
            lifetime=lifetime,
            etag_key=self._etag_key,
            serve_min_remaining=provider.policy.serve_min_remaining,
        )
        await self._store.publish(provider.name, provider.login_id, token)
        return token

    async def redeem(
        self,
        provider: Provider,
        request: httpx.Request,
        *,
        refreshing: bool = False,
        check: GrantCheck | None = None,
    ) -> Token:
        """A token for *request*, a person's login (an authorization code's exchange, or a
        refresh token they gave, *refreshing*): under the lease, its refresh token saved and
        its token published like any other. *check* runs on the answer before anything is
        kept (the ``id_token``'s check)."""
        try:
            async with self._store.lease(provider.name):
                stored = await self._store.load(provider.name, provider.login_id)
                provider.store_holds = stored.holds
                provider.resumed = True  # this login replaces whatever was kept
                token = await self._send(provider, request, refreshing, check=check)
                if (
                    provider.refresh_token is not None
                    and provider.refresh_token != provider.store_holds
                ):
                    # Not rotated by the answer (a seeded refresh token that stays): still
                    # new to the store.
                    await self._persist(provider, provider.refresh_token)
                await self._store.publish(provider.name, provider.login_id, token)
                return token
        except StoreError as exc:
            raise _unavailable(exc) from None

    async def _send(
        self,
        provider: Provider,
        request: httpx.Request,
        refreshing: bool,
        *,
        alone: bool = False,
        check: GrantCheck | None = None,
    ) -> Token:
        grant = "refresh_token" if refreshing else "login"
        started = self._clock.monotonic()
        try:
            token = await self._send_once(provider, request, refreshing, alone, check)
        except TokenEndpointError as exc:
            took = self._clock.monotonic() - started
            self.metrics.token_request(provider.name, grant, exc.code, took)
            raise
        self.metrics.token_request(
            provider.name, grant, "success", self._clock.monotonic() - started
        )
        return token

    async def _send_once(
        self,
        provider: Provider,
        request: httpx.Request,
        refreshing: bool,
        alone: bool,
        check: GrantCheck | None,
    ) -> Token:
        host = self._sending_to.setdefault(
            request.url.netloc.decode("ascii"), asyncio.Semaphore(self._per_host_limit)
        )
        async with host, self._sending:
            answer = await exchange(
                self._client,
                provider.protocol,
                request,
                refreshing=refreshing,
                timeout=provider.config.timeout,
                default_expires_in=provider.config.default_expires_in,
                clock=self._clock,
            )
        provider.clock_skew = answer.clock_skew
        grant = answer.grant
        if check is not None:
            await check(grant)
        floor = provider.policy.serve_min_remaining
        if answer.lifetime <= floor:
            # It could never be served (see serve_min_remaining).
            msg = f"the identity provider issued a token that lives {answer.lifetime:.1f} s"
            raise TokenEndpointError(
                msg, code=FailureCode.EXPIRED_ON_ARRIVAL, kind=FailureKind.TRANSIENT
            )
        if alone:
            # Ours alone: not saved to the store we could not use (nor, were it back by
            # now, without its lease); offered to it under the next lease if it holds none.
            if grant.refresh_token is not None:
                provider.refresh_token = grant.refresh_token
                provider.private_refresh = True
                provider.persist_error = None
        elif grant.refresh_token is not None and grant.refresh_token != provider.refresh_token:
            # Rotation: the old refresh token may already be dead at the provider,
            # so the new one goes to disk before anything relies on it.
            await self._persist(provider, grant.refresh_token)
            provider.refresh_token = grant.refresh_token
        return place_token(
            grant.access_token,
            sent_at=answer.sent_at,
            sent_at_wall=answer.sent_at_wall,
            lifetime=answer.lifetime,
            etag_key=self._etag_key,
            serve_min_remaining=floor,
        )

    async def _persist(self, provider: Provider, refresh_token: str) -> None:
        if not self._store.durable:
            return
        try:
            await self._store.save_refresh_token(
                provider.name,
                provider.login_id,
                refresh_token,
                replacing=Replacing(provider.store_holds),
            )
        except StoreConflict as exc:
            # Another broker took the lease after ours expired and saved its own: the one
            # every other broker now uses. Ours stays ours until the next lease takes theirs.
            provider.persist_error = None
            provider.private_refresh = True
            log.warning("%s: %s", provider.name, exc)
        except StoreError as exc:
            # Serving goes on from memory; a restart would need a new login.
            provider.persist_error = str(exc)
            self.metrics.refresh_token_saved(provider.name, ok=False)
            log.error("%s: cannot save the new refresh token: %s", provider.name, exc)
        else:
            provider.persist_error = None
            provider.private_refresh = False
            provider.store_holds = refresh_token
            self.metrics.refresh_token_saved(provider.name, ok=True)

    async def _forget(self, provider: Provider) -> None:
        try:
            await self._store.forget(provider.name)
        except StoreError as exc:
            log.error("%s: cannot remove the dead refresh token's state: %s", provider.name, exc)
        else:
            provider.store_holds = None


def _unavailable(exc: StoreError) -> TokenEndpointError:
    """A store that cannot be used, as a failed token request: an outage of Redis is
    expected, not a bug (no traceback, no internal_error), and retrying later can fix it."""
    msg = f"the token store cannot be used: {exc}"
    return TokenEndpointError(msg, code=FailureCode.STORE_UNAVAILABLE, kind=FailureKind.TRANSIENT)
