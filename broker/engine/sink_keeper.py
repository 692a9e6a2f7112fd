"""Keeps a provider's sink files in step with its token: each written on every new token,
and removed when the token in it may no longer be served and no newer one replaced it
(:mod:`broker.ops.sinks` writes the files).

Each file is on its own: one that cannot be written (its directory missing, say) is shown
with its reason (:attr:`~broker.engine.provider.ProviderSink.error`) and does not keep the
others from being written.
"""

from __future__ import annotations

import asyncio
import logging

from broker.core.clock import Clock
from broker.core.tokens import Token
from broker.engine.provider import Provider, ProviderSink
from broker.engine.tasks import Background
from broker.ops.metrics import Metrics
from broker.ops.sinks import SinkError

log = logging.getLogger("broker.manager")


class SinkKeeper:
    def __init__(
        self, clock: Clock, background: Background, metrics: Metrics | None = None
    ) -> None:
        self._clock = clock
        self._background = background
        self._metrics = metrics if metrics is not None else Metrics()

    def check(self, provider: Provider) -> None:
        """At start: whether each sink can be written (a problem is logged and shown)."""
        for sink in provider.sinks:
            try:
                sink.file.check()
            except SinkError as exc:
                sink.error = str(exc)
                log.error("%s", exc)

    async def write(self, provider: Provider, token: Token) -> None:
        """After a new token: write it to every sink file (at once, each in a thread), and
        plan the removal of each file written."""
        if not provider.sinks:
            return
        generation = provider.generation
        now = self._clock.monotonic()
        if not token.servable(now):
            return  # a sink, like every answer, never gets a token it may not serve
        await asyncio.gather(
            *(self._write(provider, sink, token, now, generation) for sink in provider.sinks)
        )

    async def _write(
        self, provider: Provider, sink: ProviderSink, token: Token, now: float, generation: int
    ) -> None:
        try:
            written = await asyncio.to_thread(sink.file.write, token, now, generation=generation)
        except SinkError as exc:
            # Callers of GET /token and the other sinks are unaffected; this file keeps the
            # previous token, and that token's planned removal stands.
            sink.error = str(exc)
            log.error("%s", exc)
            self._metrics.sink_written(provider.name, ok=False)
            return
        if not written:
            return  # a newer token was written (or tried) meanwhile: its outcome stands
        sink.error = None
        sink.written_wall = self._clock.wall()
        self._metrics.sink_written(provider.name, ok=True)
        if sink.expiry is not None:
            sink.expiry.cancel()
        sink.expiry = self._background.spawn(
            self._expire(provider, sink, token, generation), name=f"sink:{provider.name}"
        )

    async def _expire(
        self, provider: Provider, sink: ProviderSink, token: Token, generation: int
    ) -> None:
        """Remove the sink file once its token may no longer be served, unless replaced."""
        await self._clock.sleep(token.serve_until - self._clock.monotonic())
        try:
            removed = await asyncio.to_thread(sink.file.clear, generation=generation)
        except SinkError as exc:
            sink.error = str(exc)
            log.error("%s", exc)
            self._metrics.sink_removed(provider.name, ok=False)
            return
        if removed:
            sink.written_wall = None
            self._metrics.sink_removed(provider.name, ok=True)
            log.warning(
                "%s: the token in the sink file %s expired and no newer one replaced it;"
                " removed the file",
                provider.name,
                sink.file.path,
            )
