"""Prometheus metrics: values move, scrape-time gauges are live, labels stay bounded."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from broker.ops.metrics import Metrics, ProviderSnapshot
from broker.ops.metrics_labels import client_label, code_label
from broker.policy.states import PROVIDER_STATES

SECRET = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.sig-8f3e"

Sample = tuple[str, dict[str, str], float]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def scrape(metrics: Metrics) -> list[Sample]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The value of the one sample named *name* with exactly *labels*, or None."""
    found = [v for n, lab, v in samples if n == name and lab == labels]
    assert len(found) <= 1
    return found[0] if found else None


def names_with(samples: list[Sample], provider: str) -> set[str]:
    return {n for n, lab, _ in samples if lab.get("provider") == provider}


def test_fresh_registry_each_instance() -> None:
    """Two Metrics objects never share series, and the global registry stays untouched."""
    first, second = Metrics(), Metrics()
    first.token_served("hiro", None)
    assert value(scrape(first), "broker_tokens_served_total", provider="hiro", client="anonymous")
    assert (
        value(scrape(second), "broker_tokens_served_total", provider="hiro", client="anonymous")
        is None
    )
    assert first.registry is not second.registry


def test_token_requests_count_by_outcome_and_observe_latency(metrics: Metrics) -> None:
    """Counters increment per (provider, grant, outcome); the histogram counts every request."""
    metrics.token_request("hiro", "refresh_token", "success", 0.012)
    metrics.token_request("hiro", "refresh_token", "success", 0.020)
    metrics.token_request("hiro", "password", "invalid_grant", 0.3)
    s = scrape(metrics)
    total = "broker_token_requests_total"
    assert value(s, total, provider="hiro", grant="refresh_token", outcome="success") == 2.0
    assert value(s, total, provider="hiro", grant="password", outcome="invalid_grant") == 1.0
    assert value(s, "broker_token_request_seconds_count", provider="hiro") == 3.0
    assert value(s, "broker_token_request_seconds_sum", provider="hiro") == pytest.approx(0.332)
    assert value(s, "broker_token_request_seconds_bucket", provider="hiro", le="0.025") == 2.0


def test_served_saves_and_reloads_count(metrics: Metrics) -> None:
    """tokens_served, refresh_token_saves and config_reloads move with their events."""
    metrics.token_served("hub", "billing")
    metrics.token_served("hub", "billing")
    metrics.token_served("hub", None)
    metrics.refresh_token_saved("hub", ok=True)
    metrics.refresh_token_saved("hub", ok=False)
    metrics.config_reloaded(ok=True)
    s = scrape(metrics)
    assert value(s, "broker_tokens_served_total", provider="hub", client="billing") == 2.0
    assert value(s, "broker_tokens_served_total", provider="hub", client="anonymous") == 1.0
    assert value(s, "broker_refresh_token_saves_total", provider="hub", outcome="success") == 1.0
    assert value(s, "broker_refresh_token_saves_total", provider="hub", outcome="failure") == 1.0
    assert value(s, "broker_config_reloads_total", outcome="success") == 1.0
    assert value(s, "broker_config_reloads_total", outcome="failure") == 0.0


def test_watch_exports_zeroed_event_series(metrics: Metrics) -> None:
    """Watching a provider creates its save counters and histogram at 0, so rate() works."""
    metrics.watch_provider("aerion", lambda: ProviderSnapshot(state="starting", up=False))
    s = scrape(metrics)
    assert value(s, "broker_refresh_token_saves_total", provider="aerion", outcome="success") == 0
    assert value(s, "broker_token_request_seconds_count", provider="aerion") == 0.0


def test_sink_series_exist_from_the_start_for_providers_with_sinks(metrics: Metrics) -> None:
    """A provider with sink files has its sink writes and removals at 0 for both outcomes
    before any; one without has none, and loses them when a reload takes its sinks away."""
    metrics.watch_provider("hiro", lambda: ProviderSnapshot(state="ready", up=True), sinks=True)
    metrics.watch_provider("hub", lambda: ProviderSnapshot(state="ready", up=True))
    s = scrape(metrics)
    for name in ("broker_sink_writes_total", "broker_sink_removals_total"):
        for outcome in ("success", "failure"):
            assert value(s, name, provider="hiro", outcome=outcome) == 0.0
    assert not {n for n in names_with(s, "hub") if n.startswith("broker_sink_")}
    metrics.sink_written("hiro", ok=True)
    metrics.sink_written("hiro", ok=True)
    metrics.sink_written("hiro", ok=False)
    metrics.sink_removed("hiro", ok=True)
    s = scrape(metrics)
    assert value(s, "broker_sink_writes_total", provider="hiro", outcome="success") == 2.0
    assert value(s, "broker_sink_writes_total", provider="hiro", outcome="failure") == 1.0
    assert value(s, "broker_sink_removals_total", provider="hiro", outcome="success") == 1.0
    assert value(s, "broker_sink_removals_total", provider="hiro", outcome="failure") == 0.0
    metrics.watch_provider("hiro", lambda: ProviderSnapshot(state="ready", up=True))
    assert not {n for n in names_with(scrape(metrics), "hiro") if n.startswith("broker_sink_")}
    metrics.forget_provider("hiro")  # nothing left to remove: no error


def test_provider_gauges_are_read_at_scrape_time(metrics: Metrics) -> None:
    """Each scrape calls the callback: changed provider state shows up without any event."""
    current = {
        "snap": ProviderSnapshot(state="starting", up=False),
    }
    metrics.watch_provider("hiro", lambda: current["snap"])
    s = scrape(metrics)
    assert value(s, "broker_provider_up", provider="hiro") == 0.0
    assert value(s, "broker_provider_state", provider="hiro", state="starting") == 1.0
    assert value(s, "broker_token_expires_in_seconds", provider="hiro") is None
    assert value(s, "broker_clock_skew_seconds", provider="hiro") is None

    current["snap"] = ProviderSnapshot(
        state="degraded",
        up=True,
        expires_in=41.5,
        next_refresh_in=3.25,
        backoff=3.25,
        consecutive_failures=2,
        clock_skew=-7.0,
    )
    s = scrape(metrics)
    assert value(s, "broker_provider_up", provider="hiro") == 1.0
    assert value(s, "broker_token_expires_in_seconds", provider="hiro") == 41.5
    assert value(s, "broker_next_refresh_in_seconds", provider="hiro") == 3.25
    assert value(s, "broker_backoff_seconds", provider="hiro") == 3.25
    assert value(s, "broker_consecutive_failures", provider="hiro") == 2.0
    assert value(s, "broker_clock_skew_seconds", provider="hiro") == -7.0
    states = {
        lab["state"]: v
        for n, lab, v in s
        if n == "broker_provider_state" and lab["provider"] == "hiro"
    }
    assert states == {name: 1.0 if name == "degraded" else 0.0 for name in PROVIDER_STATES}


def test_watch_again_replaces_the_callback(metrics: Metrics) -> None:
    """A provider rebuilt on reload re-registers; only the new callback is used."""
    metrics.watch_provider("hub", lambda: ProviderSnapshot(state="ready", up=True, expires_in=10))
    metrics.watch_provider("hub", lambda: ProviderSnapshot(state="ready", up=True, expires_in=99))
    s = scrape(metrics)
    assert [v for n, _, v in s if n == "broker_token_expires_in_seconds"] == [99.0]


def test_forgotten_provider_vanishes(metrics: Metrics) -> None:
    """forget_provider removes every series of that provider and none of the others."""
    for name in ("hiro", "hub"):
        metrics.watch_provider(name, lambda: ProviderSnapshot(state="ready", up=True, expires_in=5))
        metrics.token_request(name, "password", "success", 0.1)
        metrics.token_served(name, "app")
        metrics.refresh_token_saved(name, ok=True)
    before = scrape(metrics)
    assert names_with(before, "hiro") == names_with(before, "hub")
    assert len(names_with(before, "hiro")) >= 10
    metrics.forget_provider("hiro")
    s = scrape(metrics)
    assert names_with(s, "hiro") == set()
    assert names_with(s, "hub") == names_with(before, "hub")
    assert value(s, "broker_tokens_served_total", provider="hub", client="app") == 1.0
    assert value(s, "broker_provider_up", provider="hub") == 1.0
    metrics.forget_provider("never-watched")  # no error
    # A provider added again (a reload) counts from zero in a new series.
    metrics.token_served("hiro", "app")
    again = scrape(metrics)
    assert value(again, "broker_tokens_served_total", provider="hiro", client="app") == 1.0


def test_callback_returning_none_skips_the_provider(metrics: Metrics) -> None:
    """A snapshot of None leaves the provider's gauges out of that scrape only."""
    present = {"yes": False}
    metrics.watch_provider(
        "hub", lambda: ProviderSnapshot(state="ready", up=True) if present["yes"] else None
    )
    assert value(scrape(metrics), "broker_provider_up", provider="hub") is None
    present["yes"] = True
    assert value(scrape(metrics), "broker_provider_up", provider="hub") == 1.0


def test_broken_callback_skips_only_that_provider(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises is logged; the scrape still succeeds for everything else."""

    def broken() -> ProviderSnapshot:
        raise RuntimeError("bug")

    metrics.watch_provider("bad", broken)
    metrics.watch_provider("good", lambda: ProviderSnapshot(state="ready", up=True))
    s = scrape(metrics)
    assert value(s, "broker_provider_up", provider="good") == 1.0
    assert value(s, "broker_provider_up", provider="bad") is None
    assert "provider bad" in caplog.text


def test_labels_never_carry_secret_looking_values(metrics: Metrics) -> None:
    """Codes, grants, clients and provider names that are not plain identifiers become 'other'."""
    metrics.token_request("hiro", "password", f"invalid_grant {SECRET}", 0.1)
    metrics.token_request("hiro", SECRET, "Bearer " + SECRET, 0.1)
    metrics.token_request(SECRET, "password", "timeout", 0.1)
    metrics.token_served("hiro", SECRET)
    metrics.token_served("hiro", "x" * 200)
    metrics.sink_written(SECRET, ok=True)
    metrics.sink_written("/run/broker/hiro.token", ok=False)
    body, _ = metrics.render()
    text = body.decode()
    assert SECRET not in text
    assert "Bearer" not in text
    assert "x" * 64 not in text
    s = scrape(metrics)
    total = "broker_token_requests_total"
    assert value(s, total, provider="hiro", grant="password", outcome="other") == 1.0
    assert value(s, total, provider="hiro", grant="other", outcome="other") == 1.0
    assert value(s, total, provider="other", grant="password", outcome="timeout") == 1.0
    assert value(s, "broker_tokens_served_total", provider="hiro", client="other") == 2.0
    assert value(s, "broker_sink_writes_total", provider="other", outcome="success") == 1.0
    assert value(s, "broker_sink_writes_total", provider="other", outcome="failure") == 1.0
    assert "/run/broker" not in text


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("invalid_grant", "invalid_grant"),
        ("http_503", "http_503"),
        ("a" * 40, "a" * 40),
        ("a" * 41, "other"),
        ("", "other"),
        ("Invalid_Grant", "other"),
        ("invalid-grant", "other"),
        ("timeout\n", "other"),
    ],
)
def test_code_label_bounds(raw: str, label: str) -> None:
    """Error codes are kept only when they match [a-z0-9_]{1,40}."""
    assert code_label(raw) == label


def test_client_label() -> None:
    """No client is 'anonymous'; a plain configured name is kept; anything else is 'other'."""
    assert client_label(None) == "anonymous"
    assert client_label("Billing-Job_2") == "Billing-Job_2"
    assert client_label("key=abc def") == "other"
    assert client_label("a.b") == "other"
    assert client_label("c" * 63) == "c" * 63
    assert client_label("c" * 64) == "other"


def test_render_serves_the_registry_as_text(metrics: Metrics) -> None:
    """render() without an Accept header gives this registry's text exposition."""
    metrics.config_reloaded(ok=False)
    body, content_type = metrics.render(None)
    assert content_type.startswith("text/plain")
    assert b'broker_config_reloads_total{outcome="failure"} 1.0' in body


def test_render_negotiates_openmetrics(metrics: Metrics) -> None:
    """render() honours an OpenMetrics Accept header (what Prometheus sends)."""
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
