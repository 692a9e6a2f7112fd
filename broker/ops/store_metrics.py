"""The shared store's metrics: leases, takeovers, announcements, conflicts and Redis errors.

Part of :class:`broker.ops.metrics.Metrics` (its ``store`` attribute), on the same registry,
with the same bounded labels. Counted by :class:`broker.engine.redis_store.RedisStore` and
the token requester, and exported only once :meth:`StoreMetrics.enable` is called: a broker
without a shared store has none of these series.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from broker.ops.metrics_labels import code_label, name_label

LEASE_HOW: Final = ("free", "waited", "takeover")
"""How a lease was acquired: at once; after another broker released it; after another
broker's lease expired under it (it had stopped renewing: it died or lost Redis)."""

OPERATIONS: Final = (
    "check",
    "load",
    "save",
    "forget",
    "publish",
    "announce",
    "listen",
    "lease",
    "renew",
    "release",
)
"""What a Redis error interrupted (the ``operation`` label of ``broker_store_errors``)."""

Track = Callable[[Counter, tuple[str, ...]], None]


class StoreMetrics:
    """Counters for the shared store; *track* remembers provider series for removal."""

    def __init__(self, registry: CollectorRegistry, track: Track) -> None:
        self._track = track
        self._leases = Counter(
            "broker_store_lease_acquisitions",
            "Leases on a provider taken from the shared store, by how: free, waited (another"
            " broker released it), takeover (another broker's lease expired under it).",
            ["provider", "how"],
            registry=None,
        )
        self._lost = Counter(
            "broker_store_leases_lost",
            "Leases that expired under this broker before it renewed or released them (Redis"
            " unreachable or too slow): another broker may have taken over.",
            ["provider"],
            registry=None,
        )
        self._announcements = Counter(
            "broker_store_announcements",
            "Token announcements sent to and received from other brokers.",
            ["direction"],
            registry=None,
        )
        for direction in ("sent", "received"):
            self._announcements.labels(direction)
        self._errors = Counter(
            "broker_store_errors",
            "Commands to the shared store that failed, by operation.",
            ["operation"],
            registry=None,
        )
        self._conflicts = Counter(
            "broker_store_conflicts",
            "Refresh tokens not saved because another broker had saved a newer one meanwhile.",
            ["provider"],
            registry=None,
        )
        self._alone = Counter(
            "broker_store_alone_logins",
            "Logins made without the lease because the shared store could not be used and the"
            " token was running out (password or client credentials; never the shared refresh"
            " token).",
            ["provider"],
            registry=None,
        )
        self._up = Gauge(
            "broker_store_up",
            "1 when the last command to the shared store succeeded, else 0.",
            registry=None,
        )
        self._registry = registry
        self._enabled = False

    def enable(self) -> None:
        """Export these series (a broker with a shared store calls this once); until then
        they count but are not on the registry, so a single broker's scrape has none."""
        if self._enabled:
            return
        self._enabled = True
        for metric in (
            self._leases,
            self._lost,
            self._announcements,
            self._errors,
            self._conflicts,
            self._alone,
            self._up,
        ):
            self._registry.register(metric)
        for operation in OPERATIONS:
            self._errors.labels(operation)  # zero series: rate() works before the first error

    def connected(self, up: bool) -> None:
        self._up.set(1 if up else 0)

    def lease_acquired(self, provider: str, how: str) -> None:
        self._inc(self._leases, name_label(provider), code_label(how))

    def lease_lost(self, provider: str) -> None:
        self._inc(self._lost, name_label(provider))

    def announcement(self, direction: str) -> None:
        self._announcements.labels(code_label(direction)).inc()

    def error(self, operation: str) -> None:
        self._errors.labels(code_label(operation)).inc()

    def conflict(self, provider: str) -> None:
        self._inc(self._conflicts, name_label(provider))

    def alone_login(self, provider: str) -> None:
        self._inc(self._alone, name_label(provider))

    def _inc(self, metric: Counter, *labels: str) -> None:
        self._track(metric, labels)
        metric.labels(*labels).inc()
