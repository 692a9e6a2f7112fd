"""Metrics, logs and file sinks as an operator sees them, against a running broker.

The metrics and the sink file are watched in-process on a fake clock
(tests/inprocess.py): the 2 s tokens' refreshes cost no real time and come at the
same steps in every run; the sink's writes happen in a thread, which the test
awaits (tests/inprocess.threads) rather than polls. The JSON logs are read from a
real broker process, as an operator would.
"""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.fakes import hiro
from broker.fakes.hiro import FakeHiro
from broker.fakes.server import serve_in_thread
from tests.inprocess import IdPs, InProcess, in_process, threads
from tests.support import FakeClock, free_port, process, ready, settings_from, wait_for

HIRO = "http://127.0.0.1:9001"
"""The fake's origin in-process: nothing listens there, IdPs routes by it."""

OPS_KEY = "ops-metrics-key-2b7c9d1e"
APP_KEY = "app-metrics-key-8f6a3e0c"


def provider_yaml(url: str, extra: str = "") -> str:
    return (
        f"providers:\n  hiro:\n    type: hiro\n    url: {url}\n"
        f"    client_id: {hiro.DEMO_CLIENT_ID}\n    client_secret: {hiro.DEMO_CLIENT_SECRET}\n"
        f"    username: {hiro.DEMO_USERNAME}\n    password: {hiro.DEMO_PASSWORD}\n{extra}"
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@asynccontextmanager
async def broker(clock: FakeClock, fake: FakeHiro, yaml_text: str) -> AsyncIterator[InProcess]:
    """The broker for *yaml_text* (its provider at :data:`HIRO`) in front of *fake*, both
    on *clock*."""
    assert fake.now == clock.wall, "the fake must issue tokens on the broker's clock"
    idps = IdPs(clock)
    idps.serve(HIRO, fake.app)
    async with in_process(settings_from(yaml_text), idps) as running:
        yield running


async def scrape(client: InProcess) -> Samples:
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {OPS_KEY}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _after_refreshes(samples: Samples, wanted: int) -> Samples:
    """*samples* once they count *wanted* successful refreshes of hiro, else empty."""
    done = value(
        samples,
        "broker_token_requests_total",
        provider="hiro",
        grant="refresh_token",
        outcome="success",
    )
    return samples if done >= wanted else {}


@pytest.mark.anyio
async def test_metrics_move_as_refreshes_happen() -> None:
    """Prometheus text that parses; token requests, expiry, state and served tokens move."""
    clock = FakeClock()
    fake = FakeHiro(ttl=2, now=clock.wall)
    clients = (
        f"clients:\n  ops: {{key: {OPS_KEY}, status: true}}\n"
        f"  app: {{key: {APP_KEY}, providers: [hiro]}}\n"
    )
    app = {"Authorization": f"Bearer {APP_KEY}"}
    async with broker(clock, fake, clients + provider_yaml(HIRO)) as client:
        assert (await client.get("/readyz")).status_code == 200  # the first token is in
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=app)).status_code == 403
        first = await scrape(client)
        for _ in range(3):
            await client.get("/token/hiro", headers=app)
        later: Samples = {}

        async def refreshed_twice() -> bool:
            nonlocal later
            later = _after_refreshes(await scrape(client), 2)
            return bool(later)

        # The broker counts a refresh once it has handled the answer: wait for the count.
        await client.eventually(refreshed_twice, within=10)
    assert value(first, "broker_provider_up", provider="hiro") == 1
    assert value(first, "broker_provider_state", provider="hiro", state="ready") == 1
    assert value(first, "broker_provider_state", provider="hiro", state="failing") == 0
    # No time has passed since the first token came (expiries are stated in ms).
    assert 1.99 < value(first, "broker_token_expires_in_seconds", provider="hiro") <= 2
    logins = value(
        later, "broker_token_requests_total", provider="hiro", grant="login", outcome="success"
    )
    refreshes = value(
        later,
        "broker_token_requests_total",
        provider="hiro",
        grant="refresh_token",
        outcome="success",
    )
    assert logins == 1
    # Scraped every step, far shorter than the ~0.6 s between refreshes: the count is seen
    # when it reaches 2, not later.
    assert refreshes == 2
    assert refreshes > value(
        first,
        "broker_token_requests_total",
        provider="hiro",
        grant="refresh_token",
        outcome="success",
    )
    assert value(later, "broker_tokens_served_total", provider="hiro", client="app") == 3
    assert value(later, "broker_token_request_seconds_count", provider="hiro") == 3


@pytest.mark.smoke  # uvicorn's own JSON log lines exist only in a real process
def test_json_logs_parse_and_carry_the_event_fields(tmp_path: Path) -> None:
    """log_format: json gives one JSON object per line with event, provider and duration."""
    fake = FakeHiro(ttl=2)
    port = free_port()
    with serve_in_thread(fake.app) as url:
        config = tmp_path / "config.yaml"
        config.write_text(f"port: {port}\nlog_format: json\n" + provider_yaml(url))
        config.chmod(0o600)
        with process("serve", "--config", str(config)) as broker:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: ready(base, broker.proc), timeout=30)
            wait_for(
                lambda: "token_refreshed" in broker.output and fake.token_requests("refresh_token")
            )
    lines = [line for line in broker.output.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    refreshed = [r for r in records if r.get("event") == "token_refreshed"]
    assert refreshed
    assert refreshed[0]["provider"] == "hiro"
    assert isinstance(refreshed[0]["duration_ms"], int | float)
    assert any(r["logger"].startswith("uvicorn") for r in records), "uvicorn logs in JSON too"
    for secret in (hiro.DEMO_PASSWORD, hiro.DEMO_CLIENT_SECRET, *fake.issued_access_tokens):
        assert secret not in broker.output


@pytest.mark.anyio
async def test_file_sink_follows_refreshes(tmp_path: Path) -> None:
    """A provider's sink file always holds its current token, with the configured mode."""
    clock = FakeClock()
    fake = FakeHiro(ttl=2, now=clock.wall)
    sink = tmp_path / "tokens" / "hiro.env"
    sink.parent.mkdir()
    extra = f"    sink: {{path: {sink}, format: env, mode: 0o640, env_prefix: HIRO_TOKEN}}\n"
    async with threads() as work, broker(clock, fake, provider_yaml(HIRO, extra)) as client:

        async def current_in_sink() -> bool:
            """Once the broker's file work is done: the file holds the token served now."""
            await work.idle()
            served = (await client.get("/token/hiro")).json()["access_token"]
            assert f"HIRO_TOKEN='{served}'" in sink.read_text().splitlines()
            return len(fake.issued_access_tokens) >= 3

        # Written with the first token, and rewritten with each one after it.
        await client.eventually(current_in_sink, within=10)
        await work.idle()
        assert fake.issued_access_tokens[-1] in sink.read_text()
        served = (await client.get("/token/hiro")).json()["access_token"]
    text = sink.read_text()
    assert f"HIRO_TOKEN='{served}'" in text.splitlines()
    assert "HIRO_TOKEN_EXPIRES_AT=" in text
    assert stat.S_IMODE(sink.stat().st_mode) == 0o640
    assert [p.name for p in sink.parent.iterdir()] == ["hiro.env"], "no temp files left"
