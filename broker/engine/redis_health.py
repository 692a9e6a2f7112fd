"""How the Redis store is doing: whether its last command succeeded, its last error (with
no secret in it) and the metrics of both, for ``/providers``, ``/readyz`` and ``/metrics``.

Shared by :mod:`broker.engine.redis_store` and :mod:`broker.engine.redis_channel`: every
command either reaches Redis (:meth:`RedisHealth.reached`) or fails
(:meth:`RedisHealth.failed`, which also builds the StoreError to raise).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from broker.core.clock import Clock
from broker.core.sanitize import one_line, shortened
from broker.engine.store import StoreError, StoreStatus
from broker.ops.store_metrics import StoreMetrics

REASON_LENGTH = 200
"""How much of a message from redis-py an error passes on."""


class RedisHealth:
    """The store's status and metrics; *secrets* are scrubbed from every error."""

    def __init__(
        self, where: str, *, secrets: Sequence[str], clock: Clock, metrics: StoreMetrics | None
    ) -> None:
        self.where = where
        self._secrets = secrets
        self._clock = clock
        self.status = StoreStatus(backend="redis", where=where)
        if metrics is None:
            # Counted nowhere: a store opened only to check it (broker check, serve's start).
            metrics = StoreMetrics(CollectorRegistry(), lambda _metric, _labels: None)
        else:
            metrics.enable()
        self.metrics = metrics

    def reached(self) -> None:
        """A command succeeded: Redis is reachable."""
        if self.status.connected is not True:
            self.status.connected = True
            self.metrics.connected(True)

    def unreached(self, message: str, operation: str) -> None:
        """A command failed (*message* says how; no secret in it)."""
        self.status.connected = False
        self.status.last_error = message
        self.status.last_error_wall = self._clock.wall()
        self.metrics.connected(False)
        self.metrics.error(operation)

    def failed(self, operation: str, what: str, exc: BaseException) -> StoreError:
        """The StoreError for a command that failed doing *what*, recorded under
        *operation*: names the store, shortened, scrubbed of the URL's secrets."""
        reason = str(exc) or type(exc).__name__
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        reason = shortened(one_line(reason), REASON_LENGTH)
        message = f"{self.where}: {what} failed: {reason}"
        self.unreached(message, operation)
        return StoreError(message)
