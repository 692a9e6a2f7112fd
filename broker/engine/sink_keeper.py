"""Keeps a provider's sink file in step with its token: written on every new token, removed
when that token may no longer be served and none replaced it (:mod:`broker.ops.sinks` writes
the file)."""

from __future__ import annotations

import asyncio
import logging

from broker.core.clock import Clock
from broker.core.tokens import Token
from broker.engine.provider import Provider
from broker.engine.tasks import Background
from broker.ops.sinks import FileSink, SinkError

log = logging.getLogger("broker.manager")


class SinkKeeper:
    def __init__(self, clock: Clock, background: Background) -> None:
        self._clock = clock
        self._background = background

    def check(self, provider: Provider) -> None:
        """At start: whether the sink can be written (a problem is logged and shown)."""
        if provider.sink is None:
            return
        try:
            provider.sink.check()
        except SinkError as exc:
            provider.sink_error = str(exc)
            log.error("%s", exc)

    async def write(self, provider: Provider, token: Token) -> None:
        """After a new token: write it to the sink file, and plan the file's removal."""
        sink = provider.sink
        if sink is None:
            return
        generation = provider.generation
        now = self._clock.monotonic()
        if not token.servable(now):
            return  # a sink, like every answer, never gets a token it may not serve
        try:
            await asyncio.to_thread(sink.write, token, now, generation=generation)
        except SinkError as exc:
            # Callers of GET /token are unaffected; the file keeps the previous token.
            provider.sink_error = str(exc)
            log.error("%s", exc)
            return
        provider.sink_error = None
        if provider.sink_expiry is not None:
            provider.sink_expiry.cancel()
        provider.sink_expiry = self._background.spawn(
            self._expire(provider, sink, token, generation), name=f"sink:{provider.name}"
        )

    async def _expire(
        self, provider: Provider, sink: FileSink, token: Token, generation: int
    ) -> None:
        """Remove the sink file once its token may no longer be served, unless replaced."""
        await self._clock.sleep(token.serve_until - self._clock.monotonic())
        if provider.token is not token:
            return
        try:
            await asyncio.to_thread(sink.clear, generation=generation)
        except SinkError as exc:
            provider.sink_error = str(exc)
            log.error("%s", exc)
        else:
            log.warning(
                "%s: token expired with no replacement; removed the sink file %s",
                provider.name,
                sink.path,
            )
