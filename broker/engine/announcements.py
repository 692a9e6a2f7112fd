"""What other brokers publish, served here: the listener that takes each token another broker
sharing the store announces, so that every replica serves the current token from its own
memory within milliseconds and plans its next refresh from it.

One listener per broker, for all providers, started by :class:`~broker.engine.manager.TokenManager`
only when the store is shared. It never stands between a caller and a token: it only
installs a newer one, by the same rule a token request uses inside the lease
(:meth:`~broker.engine.token_request.TokenRequester.adopt`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from broker.core.clock import Clock
from broker.engine.outcomes import OutcomeRecorder
from broker.engine.provider import Provider
from broker.engine.sink_keeper import SinkKeeper
from broker.engine.store import EVERY_PROVIDER, StoreError, TokenStore
from broker.engine.token_request import TokenRequester

log = logging.getLogger("broker.manager")

LISTEN_BACKOFF = (0.5, 30.0)
"""Seconds before listening again to a store that failed: the first pause, doubled at each
failure in a row up to the second. Missed announcements cost nothing but a later take-over
(the next refresh reads the store first), so a dead Redis is not hammered."""


class AnnouncementListener:
    """Takes the tokens other brokers announce through the shared store."""

    def __init__(
        self,
        *,
        store: TokenStore,
        clock: Clock,
        providers: Callable[[], Mapping[str, Provider]],
        requester: TokenRequester,
        outcomes: OutcomeRecorder,
        sinks: SinkKeeper,
    ) -> None:
        self._store = store
        self._clock = clock
        self._providers = providers  # read at each announcement: a reload swaps providers
        self._requester = requester
        self._outcomes = outcomes
        self._sinks = sinks

    async def run(self) -> None:
        """Take every token another broker announces; listen again after a failure, with
        backoff; runs until cancelled (or the store has nothing to announce)."""
        failures = 0
        while True:
            try:
                async for name in self._store.announcements():
                    failures = 0
                    if name == EVERY_PROVIDER:
                        for provider in list(self._providers().values()):
                            await self.take(provider)
                    elif (named := self._providers().get(name)) is not None:
                        await self.take(named)
                return
            except StoreError as exc:
                failures += 1
                pause = min(LISTEN_BACKOFF[0] * 2 ** (failures - 1), LISTEN_BACKOFF[1])
                log.warning("announcements: %s; listening again in %.1f s", exc, pause)
                await self._clock.sleep(pause)

    async def take(self, provider: Provider) -> None:
        """Install the token the store holds for *provider* if it is newer than ours (and
        its refresh token), and replan the provider's refresh from it. Never raises for a
        store or a value it cannot read: ours stays in use (logged)."""
        try:
            stored = await self._store.load(provider.name, provider.login_id)
        except StoreError as exc:
            log.warning("%s: cannot read the announced token: %s", provider.name, exc)
            return
        except Exception:
            # A bug must not end the listener: the other providers' announcements matter.
            log.exception("%s: unexpected error while reading the announced token", provider.name)
            return
        # Nothing awaited from here on, so neither can change before the install: a
        # provider retired by a reload meanwhile is left alone, and a token request in flight
        # reads the store itself inside the lease (installing now would make it look as if
        # ours were the newest, and it would ask the identity provider again).
        if self._providers().get(provider.name) is not provider or provider.inflight is not None:
            return
        token = self._requester.adopt(provider, stored)
        if token is None:
            return
        self._outcomes.success(provider, token, "announced", 0.0)
        provider.wake.set()  # plan the next refresh from the new token
        await self._sinks.write(provider, token)
