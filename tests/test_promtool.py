"""``/metrics`` of a running broker passes Prometheus' own linter, ``promtool check metrics``
(Debian's ``prometheus`` package; scripts/test installs it when missing): every series, the
shared store's and the sink files' included, as a real scrape returns them after tokens
were served and a refresh failed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from broker.fakes import FakeOAuth2
from broker.fakes.server import serve_in_thread
from tests.support import running_broker, settings_from

pytestmark = pytest.mark.smoke  # a real socket and a program

PROMTOOL = "promtool"
CONFIG = """
providers:
  good:
    type: oauth2
    grant: client_credentials
    token_url: "{idp}/oauth/token"
    client_id: app
    client_secret: app-secret
    sinks:
      - {{path: "{sinks}/good.token"}}
      - {{path: "{sinks}/missing/good.json", format: json}}
  refused:
    type: oauth2
    grant: client_credentials
    token_url: "{idp}/oauth/token"
    client_id: app
    client_secret: wrong-secret
"""


def test_a_live_scrape_passes_promtool(promtool: str, tmp_path: Path) -> None:
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=300.0)
    with (
        serve_in_thread(fake.app) as idp,
        running_broker(settings_from(CONFIG.format(idp=idp, sinks=tmp_path))) as broker,
    ):
        assert broker.get("/token/good").status_code == 200
        broker.get("/token/refused")
        scrape = broker.get("/metrics")
    assert scrape.status_code == 200
    text = scrape.text
    assert "broker_build_info{" in text
    assert "process_resident_memory_bytes" in text
    assert "python_info{" in text
    assert "_created" not in text
    assert 'broker_sink_writes_total{outcome="failure",provider="good"}' in text
    assert 'broker_sink_removals_total{outcome="success",provider="good"} 0.0' in text
    assert promtool_findings(promtool, text) == ""  # no error, not even a warning


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool's path; skipped without it, except in CI, where it fails."""
    found = shutil.which(PROMTOOL)
    if found is None:
        reason = "promtool is missing (apt-get install prometheus; scripts/test does)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


def promtool_findings(promtool: str, text: str) -> str:
    """What ``promtool check metrics`` says of the exposition *text* (it must not fail)."""
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return checked.stdout + checked.stderr
