"""Prometheus metrics for the broker, on an injected registry.

Everything lives on one :class:`prometheus_client.CollectorRegistry` owned by
a :class:`Metrics` instance (never the process-global ``REGISTRY``), so tests
and several apps in one process do not share series.

Two kinds of metric:

* **events**, counted as they happen: token requests to identity providers
  (with their latency), tokens served to callers, refresh-token saves, sink-file
  writes and removals, and config reloads. The manager and the app call the methods
  below.
* **provider state**, computed **at scrape time** from a callback per provider
  (:meth:`Metrics.watch_provider`): seconds until the current token expires,
  the provider's state, whether a servable token exists, the current retry
  delay, consecutive failures, clock skew and the next refresh. Nothing has
  to be kept up to date by hand, and a scrape always sees the truth.

Label values are bounded: error codes must match ``[a-z0-9_]{1,40}`` and
provider names (:data:`broker.core.names.PROVIDER_NAME`) and client names
``[A-Za-z0-9][A-Za-z0-9_-]{0,62}``; anything else is exported as ``other``
(no dots: a JWT is three dotted parts). The broker never passes a
secret here on purpose; the bound makes sure a mistake cannot put one (or an
unbounded number of series) into a metrics database.

Scrapes run on the event loop (:meth:`Metrics.render` is synchronous), the
same thread that mutates provider state, so a callback reads consistent values.
"""

from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from broker import __version__
from broker.ops.metrics_labels import client_label, code_label, name_label
from broker.ops.store_metrics import StoreMetrics
from broker.policy.states import PROVIDER_STATES

log = logging.getLogger("broker.metrics")

# No *_created series: one more series per counter and histogram that no dashboard uses
# (OpenMetrics' creation time), doubling what Prometheus stores. Process-wide, which the
# broker is.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it untyped


DENIAL_REASONS: Final = (
    "unauthorized",
    "forbidden",
    "host_not_allowed",
    "proxied_request",
    "browser_request",
    "not_loopback",
    "required_header_missing",
    "headers_too_large",
)
"""The codes of the guard's refusals (:class:`broker.web.security.Denied`): zero series for
each, so that ``rate()`` works before the first."""

REQUEST_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Token request latency buckets (seconds): a few ms locally up to the 10 s default timeout."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderSnapshot:
    """One provider's state at scrape time, as the callback given to ``watch_provider`` sees it.

    Durations are seconds; None means "not applicable" and leaves the series
    out of that scrape (no token yet, no Date header, nothing scheduled).
    """

    state: str
    """One of :data:`PROVIDER_STATES`."""
    up: bool
    """A servable (unexpired) token exists."""
    expires_in: float | None = None
    """Seconds until the current token expires (negative once expired), None without a token."""
    next_refresh_in: float | None = None
    """Seconds until the next planned token request, None when none is planned."""
    backoff: float = 0.0
    """Current retry delay after failures, 0 when not backing off."""
    consecutive_failures: int = 0
    clock_skew: float | None = None
    """The identity provider's clock minus ours, None when unknown."""


SnapshotFn = Callable[[], ProviderSnapshot | None]
"""Returns the provider's state now, or None to leave it out of this scrape."""


class _ProviderCollector:
    """Builds the per-provider gauges from the registered snapshot callbacks at each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, SnapshotFn] = {}

    def watch(self, provider: str, snapshot: SnapshotFn) -> None:
        with self._lock:
            self._watched[provider] = snapshot

    def forget(self, provider: str) -> None:
        with self._lock:
            self._watched.pop(provider, None)

    def describe(self) -> Iterable[Metric]:
        # Lets the registry detect name clashes at registration without calling collect().
        return self._families()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        with self._lock:
            watched = sorted(self._watched.items())
        expires, skew, next_refresh, up, state, backoff, failures = families
        for provider, snapshot_fn in watched:
            try:
                snap = snapshot_fn()
            except Exception:
                # A broken callback must not break the whole scrape.
                log.exception("metrics: cannot read the state of provider %s", provider)
                continue
            if snap is None:
                continue
            labels = [provider]
            if snap.expires_in is not None:
                expires.add_metric(labels, snap.expires_in)
            if snap.clock_skew is not None:
                skew.add_metric(labels, snap.clock_skew)
            if snap.next_refresh_in is not None:
                next_refresh.add_metric(labels, max(snap.next_refresh_in, 0.0))
            up.add_metric(labels, 1.0 if snap.up else 0.0)
            for name in PROVIDER_STATES:
                state.add_metric([provider, name], 1.0 if snap.state == name else 0.0)
            backoff.add_metric(labels, max(snap.backoff, 0.0))
            failures.add_metric(labels, float(snap.consecutive_failures))
        yield from families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        p = ["provider"]
        return [
            GaugeMetricFamily(
                "broker_token_expires_in_seconds",
                "Seconds until the provider's current token expires.",
                labels=p,
            ),
            GaugeMetricFamily(
                "broker_clock_skew_seconds",
                "The identity provider's clock minus the broker's, from its Date header.",
                labels=p,
            ),
            GaugeMetricFamily(
                "broker_next_refresh_in_seconds",
                "Seconds until the provider's next planned token request.",
                labels=p,
            ),
            GaugeMetricFamily(
                "broker_provider_up",
                "1 when the provider holds a servable token, else 0.",
                labels=p,
            ),
            GaugeMetricFamily(
                "broker_provider_state",
                "1 for the provider's current state, 0 for the others.",
                labels=["provider", "state"],
            ),
            GaugeMetricFamily(
                "broker_backoff_seconds",
                "Current retry delay after failed token requests (0 when not backing off).",
                labels=p,
            ),
            GaugeMetricFamily(
                "broker_consecutive_failures",
                "Failed token requests since the last success.",
                labels=p,
            ),
        ]


class Metrics:
    """The broker's metrics on one registry (a fresh one unless *registry* is given).

    Call the event methods from the manager and the app, ``watch_provider`` once
    per provider (again to replace its callback), ``forget_provider`` when a
    provider is removed, and serve :meth:`render` at ``/metrics``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # What operators join every other series on, as Prometheus' own *_build_info.
        build = Gauge(
            "broker_build_info",
            "Always 1; the broker's version and Python's in its labels.",
            ["version", "python"],
            registry=r,
        )
        build.labels(__version__, platform.python_version()).set(1)
        # The process (CPU, memory, open files, start time) and the platform (Python), as
        # every Prometheus client exports by default: here on our own registry.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._token_requests = Counter(
            "broker_token_requests",
            "Token requests to identity providers, by grant and outcome"
            " (success or a stable error code).",
            ["provider", "grant", "outcome"],
            registry=r,
        )
        self._token_request_seconds = Histogram(
            "broker_token_request_seconds",
            "Duration of token requests to identity providers.",
            ["provider"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self._tokens_served = Counter(
            "broker_tokens_served",
            "Tokens handed to callers, by configured client name (anonymous without one).",
            ["provider", "client"],
            registry=r,
        )
        self._refresh_token_saves = Counter(
            "broker_refresh_token_saves",
            "Refresh tokens written to the state directory, by outcome.",
            ["provider", "outcome"],
            registry=r,
        )
        self._sink_writes = Counter(
            "broker_sink_writes",
            "Tokens written to sink files (one per file and token), by outcome.",
            ["provider", "outcome"],
            registry=r,
        )
        self._sink_removals = Counter(
            "broker_sink_removals",
            "Sink files removed because the token in them expired and no newer one replaced"
            " it, by outcome.",
            ["provider", "outcome"],
            registry=r,
        )
        self._config_reloads = Counter(
            "broker_config_reloads",
            "Configuration reloads (SIGHUP), by outcome.",
            ["outcome"],
            registry=r,
        )
        for outcome in ("success", "failure"):
            self._config_reloads.labels(outcome)
        self._caller_fetches_refused = Counter(
            "broker_caller_fetches_refused",
            "Token requests callers asked for (min_valid, forced refresh) that the per-provider"
            " rate limit refused with 429.",
            ["provider"],
            registry=r,
        )
        self._denied = Counter(
            "broker_caller_denied",
            "Requests the broker refused before any token or status was read, by reason (the"
            " answer's error code: unauthorized, forbidden, browser_request, ...).",
            ["reason"],
            registry=r,
        )
        for reason in DENIAL_REASONS:
            self._denied.labels(reason)
        self._providers = _ProviderCollector()
        r.register(self._providers)
        self._series_lock = threading.Lock()
        self._series: dict[str, set[tuple[Counter | Histogram, tuple[str, ...]]]] = {}
        self.store = StoreMetrics(r, self._track)
        """The shared store's metrics (Redis): counted only by a broker that has one."""
        self._served_series: dict[tuple[str, str | None], Counter] = {}

    # -- events -----------------------------------------------------------------

    def token_request(self, provider: str, grant: str, outcome: str, seconds: float) -> None:
        """One token request finished: *outcome* is ``success`` or the error code."""
        p = name_label(provider)
        self._inc(self._token_requests, p, code_label(grant), code_label(outcome))
        self._track(self._token_request_seconds, (p,))
        self._token_request_seconds.labels(p).observe(max(seconds, 0.0))

    def token_served(self, provider: str, client: str | None = None) -> None:
        """A token was handed to a caller (*client*: its configured name, None if anonymous)."""
        # Once per token served: the series is looked up (labels validated, locks
        # taken, tracked for forget_provider) only the first time.
        series = self._served_series.get((provider, client))
        if series is None:
            labels = (name_label(provider), client_label(client))
            self._track(self._tokens_served, labels)
            series = self._served_series[provider, client] = self._tokens_served.labels(*labels)
        series.inc()

    def caller_denied(self, reason: str) -> None:
        """A request was refused by the request checks or the callers' keys (401, 403, 412,
        431): *reason* is the answer's error code."""
        self._denied.labels(code_label(reason)).inc()

    def caller_fetch_refused(self, provider: str) -> None:
        """A caller-triggered token request was refused by the rate limit."""
        self._inc(self._caller_fetches_refused, name_label(provider))

    def refresh_token_saved(self, provider: str, ok: bool) -> None:
        """A refresh token was (ok) or could not be (not ok) saved to the state directory."""
        self._inc(self._refresh_token_saves, name_label(provider), "success" if ok else "failure")

    def sink_written(self, provider: str, ok: bool) -> None:
        """A token was (ok) or could not be (not ok) written to one of the provider's sink
        files. Which file is in ``/providers``: a path is no label value."""
        self._inc(self._sink_writes, name_label(provider), "success" if ok else "failure")

    def sink_removed(self, provider: str, ok: bool) -> None:
        """A sink file whose token expired unreplaced was (ok) or could not be removed."""
        self._inc(self._sink_removals, name_label(provider), "success" if ok else "failure")

    def config_reloaded(self, ok: bool) -> None:
        """A config reload was applied (ok) or rejected."""
        self._config_reloads.labels("success" if ok else "failure").inc()

    # -- providers ----------------------------------------------------------------

    def watch_provider(self, provider: str, snapshot: SnapshotFn, *, sinks: bool = False) -> None:
        """Export *provider*'s state from *snapshot*, called at every scrape.

        *snapshot* may return None to leave the provider out of a scrape (it
        is being rebuilt by a reload, say). Calling this again for the same
        name replaces the callback. Also creates the provider's zero-valued
        event series, so ``rate()`` works before the first event: its sink
        writes' and removals' too when it has sink files (*sinks*; without, a
        reload that took its sinks away drops those series).
        """
        p = name_label(provider)
        self._providers.watch(p, snapshot)
        self._track(self._token_request_seconds, (p,))
        self._token_request_seconds.labels(p)
        for outcome in ("success", "failure"):
            self._track(self._refresh_token_saves, (p, outcome))
            self._refresh_token_saves.labels(p, outcome)
        self._track(self._caller_fetches_refused, (p,))
        self._caller_fetches_refused.labels(p)
        for counter in (self._sink_writes, self._sink_removals):
            for outcome in ("success", "failure"):
                if sinks:
                    self._track(counter, (p, outcome))
                    counter.labels(p, outcome)
                else:
                    self._untrack(counter, (p, outcome))
                    counter.remove(p, outcome)

    def forget_provider(self, provider: str) -> None:
        """Drop every series labelled with *provider* (removed from the config)."""
        p = name_label(provider)
        self._providers.forget(p)
        for key in [k for k in self._served_series if name_label(k[0]) == p]:
            del self._served_series[key]
        with self._series_lock:
            series = self._series.pop(p, set())
        for metric, labels in series:
            metric.remove(*labels)

    # -- exposition -----------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header: ``(body, content_type)``.

        For a plain route (``@app.get("/metrics")``) instead of a mount, which
        would redirect ``/metrics`` to ``/metrics/``.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # -- internals ------------------------------------------------------------------

    def _track(self, metric: Counter | Histogram, labels: tuple[str, ...]) -> None:
        """Remember a series for ``forget_provider`` (labels[0] is the provider)."""
        with self._series_lock:
            self._series.setdefault(labels[0], set()).add((metric, labels))

    def _untrack(self, metric: Counter | Histogram, labels: tuple[str, ...]) -> None:
        with self._series_lock:
            self._series.get(labels[0], set()).discard((metric, labels))

    def _inc(self, metric: Counter, *labels: str) -> None:
        self._track(metric, labels)
        metric.labels(*labels).inc()
