"""Several sink files per provider (``sinks:``), through the broker's HTTP API: each file is
written on every new token and removed when the token in it expires unreplaced; one that
cannot be written does not stop the others, and ``/providers`` names it.

The broker and the fake identity provider run in one event loop on a fake clock
(tests/inprocess.py); the files are written in a thread, which the tests wait for
(``tests.inprocess.threads``), never sleeping.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.core.tokens import rfc3339
from broker.fakes import FakeOAuth2
from broker.ops.atomic import TEMP_SUFFIX
from broker.web.api_models import ProviderStatus, SinkStatus
from tests.inprocess import IdPs, InProcess, Threads, in_process, threads
from tests.support import FakeClock, settings_from

pytestmark = pytest.mark.anyio

as_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason=f"giving a file to another user takes root; the tests run as uid {os.geteuid()}",
)

IDP = "http://127.0.0.1:9001"
"""The fake's origin: nothing listens there, IdPs routes by it."""
SECRET = "app-secret-5e0c9a"

CONFIG = """
refresh: {{backoff_initial: 0.5, backoff_max: 1}}
providers:
  p:
    type: oauth2
    grant: client_credentials
    token_url: "{idp}/oauth/token"
    client_id: app
    client_secret: {secret}
    sinks:
{sinks}"""


def config(*sinks: str) -> str:
    """The provider ``p`` with these sink mappings (YAML flow mappings) as its ``sinks``."""
    items = "".join(f"      - {sink}\n" for sink in sinks)
    return CONFIG.format(idp=IDP, secret=SECRET, sinks=items)


@asynccontextmanager
async def broker(
    clock: FakeClock, fake: FakeOAuth2, yaml_text: str
) -> AsyncIterator[tuple[InProcess, Threads]]:
    """The broker in front of *fake*, its file work in a thread that tests can wait for."""
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    async with threads() as work, in_process(settings_from(yaml_text), idps) as running:
        await work.idle()  # the first token's files
        yield running, work


async def status(running: InProcess) -> dict[str, Any]:
    entry: dict[str, Any] = (await running.client.get("/providers")).json()["providers"]["p"]
    return entry


async def served(running: InProcess) -> str:
    token: str = (await running.get("/token/p")).json()["access_token"]
    return token


async def sink_counts(running: InProcess, *secrets: str) -> dict[tuple[str, str], float]:
    """``/metrics``' sink series of ``p``: (name, outcome) → count. Their labels are the
    provider and the outcome, nothing else; no *secrets* (paths, tokens) anywhere."""
    text = (await running.client.get("/metrics")).text
    for secret in secrets:
        assert secret not in text
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("broker_sink_"):
                assert set(sample.labels) == {"provider", "outcome"}
                assert sample.labels["provider"] == "p"
                counts[sample.name, sample.labels["outcome"]] = sample.value
    return counts


def counted(writes: float, failed: float, removed: float = 0.0) -> dict[tuple[str, str], float]:
    return {
        ("broker_sink_writes_total", "success"): writes,
        ("broker_sink_writes_total", "failure"): failed,
        ("broker_sink_removals_total", "success"): removed,
        ("broker_sink_removals_total", "failure"): 0.0,
    }


def token_in(path: Path) -> str | None:
    """The token a sink file holds (any format), or None when there is no file."""
    if not path.exists():
        return None
    text = path.read_text()
    if text.startswith("{"):
        token: str = json.loads(text)["access_token"]
        return token
    if "=" in text:
        return text.splitlines()[0].split("=", 1)[1].strip("'")
    return text


async def test_one_sink_that_cannot_be_written_does_not_stop_the_others(tmp_path: Path) -> None:
    """Three files, the first in a directory that is missing at start: the other two get
    every token; /providers and /readyz name the failing file; once its directory exists
    the next token reaches all three and the provider is ready."""
    clock = FakeClock()
    fake = FakeOAuth2(clients={"app": SECRET}, ttl=30.0, now=clock.wall)
    later, run = tmp_path / "later", tmp_path / "run"
    run.mkdir()
    yaml_text = config(
        f'{{path: "{later}/p.token"}}',
        f'{{path: "{run}/p.json", format: json}}',
        f'{{path: "{run}/p.env", format: env, env_prefix: P}}',
    )
    async with broker(clock, fake, yaml_text) as (running, work):
        first = await served(running)
        started = clock.wall()
        shown = await status(running)
        ready = (await running.client.get("/readyz")).json()

        assert token_in(run / "p.json") == first
        assert (run / "p.env").read_text().splitlines()[0] == f"P='{first}'"
        assert shown["state"] == "degraded"
        error = shown["sink_error"]
        assert error == (
            f"token sink {later}/p.token for provider 'p': cannot be written:"
            " No such file or directory"
        )
        assert shown["sinks"] == [
            {
                "path": f"{later}/p.token",
                "format": "token",
                "ok": False,
                "error": error,
                "written_at": None,
            },
            {
                "path": f"{run}/p.json",
                "format": "json",
                "ok": True,
                "error": None,
                "written_at": rfc3339(started),
            },
            {
                "path": f"{run}/p.env",
                "format": "env",
                "ok": True,
                "error": None,
                "written_at": rfc3339(started),
            },
        ]
        assert ready["ready"] is True  # GET /token callers are served
        assert ready["providers"]["p"]["error"] == {"code": "sink_error", "message": error}
        assert await sink_counts(running, str(tmp_path), first) == counted(2, 1)

        later.mkdir()

        async def all_written() -> bool:
            await work.idle()
            return bool((await status(running))["state"] == "ready")

        await running.eventually(all_written, within=30)
        second = await served(running)
        shown = await status(running)
        assert await sink_counts(running, str(tmp_path), first, second) == counted(5, 1)
    assert second != first
    assert [token_in(p) for p in (later / "p.token", run / "p.json", run / "p.env")] == [second] * 3
    assert shown["sink_error"] is None
    assert [(s["ok"], s["error"]) for s in shown["sinks"]] == [(True, None)] * 3
    assert len({s["written_at"] for s in shown["sinks"]}) == 1
    assert sorted(p.name for p in run.iterdir()) == ["p.env", "p.json"], "no temp files left"


async def test_each_file_loses_its_token_when_that_token_expires_unreplaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two files. The first stops taking new files after the first token (its directory
    refuses them), the second takes the second token. The first file is removed when the
    first token may no longer be served, though a newer token exists (it never reached that
    file); the second keeps the newer token until that one expires, unreplaced as the
    identity provider fails, and is removed then. No token is in a log record, /providers
    or /metrics on the way."""
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    fake = FakeOAuth2(clients={"app": SECRET}, ttl=6.0, now=clock.wall)
    stuck, fine = tmp_path / "stuck", tmp_path / "fine"
    stuck.mkdir()
    fine.mkdir()
    yaml_text = config(f'{{path: "{stuck}/p.token"}}', f'{{path: "{fine}/p.token"}}')
    async with broker(clock, fake, yaml_text) as (running, work):
        first = await served(running)
        assert token_in(stuck / "p.token") == token_in(fine / "p.token") == first

        # The directory of the first file refuses new files from now on (as one that is no
        # longer writable for the broker's user would; this test runs as root).
        real_open = os.open

        def refusing(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
            name = os.fsdecode(path)
            if name.startswith(f"{stuck}/") and name.endswith(TEMP_SUFFIX):
                raise PermissionError(13, "Permission denied")
            return real_open(path, flags, mode, **kwargs)

        monkeypatch.setattr(os, "open", refusing)

        async def second_token() -> bool:
            await work.idle()
            if len(fake.issued_access_tokens) < 2:
                return False
            fake.fail_next(1000, 503)  # no third token: the second one will run out
            return True

        await running.eventually(second_token, within=10)
        second = fake.issued_access_tokens[1]
        shown = await status(running)
        assert token_in(stuck / "p.token") == first
        assert token_in(fine / "p.token") == second
        assert shown["state"] == "degraded"
        assert shown["sink_error"] == (
            f"token sink {stuck}/p.token for provider 'p': cannot be written: Permission denied"
        )
        assert [s["ok"] for s in shown["sinks"]] == [False, True]

        async def first_file_removed() -> bool:
            await work.idle()
            in_stuck = token_in(stuck / "p.token")
            assert in_stuck in (first, None)
            return in_stuck is None

        await running.eventually(first_file_removed, within=10)
        # The first token may no longer be served; the second still may, and is.
        assert await served(running) == second
        assert token_in(fine / "p.token") == second
        shown = await status(running)
        assert [s["written_at"] is None for s in shown["sinks"]] == [True, False]

        async def second_file_removed() -> bool:
            await work.idle()
            return token_in(fine / "p.token") is None

        await running.eventually(second_file_removed, within=10)
        assert (await running.client.get("/token/p")).status_code == 503
        shown = await status(running)
        assert [s["written_at"] for s in shown["sinks"]] == [None, None]
        # The first token to both files, the second to one (the other refused it).
        assert await sink_counts(running, str(tmp_path), first, second) == counted(3, 1, 2)
        shown_text = (await running.client.get("/providers")).text
    assert list(stuck.iterdir()) == list(fine.iterdir()) == []
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert f"{stuck}/p.token for provider 'p': cannot be written" in logged
    assert f"the token in the sink file {fine}/p.token expired" in logged
    for secret in (SECRET, *fake.issued_access_tokens):
        assert secret not in logged
        assert secret not in shown_text


@as_root
async def test_a_sink_given_to_another_user_keeps_its_owner_through_refreshes(
    tmp_path: Path,
) -> None:
    """owner/group (numbers no one here has) and mode on one file, the broker's own on the
    other, for the first token and the next."""
    clock = FakeClock()
    fake = FakeOAuth2(clients={"app": SECRET}, ttl=30.0, now=clock.wall)
    given, own = tmp_path / "app.token", tmp_path / "own.json"
    yaml_text = config(
        f'{{path: "{given}", owner: 10001, group: "10002", mode: 0o640}}',
        f'{{path: "{own}", format: json}}',
    )
    async with broker(clock, fake, yaml_text) as (running, work):
        seen = set()

        async def second_token() -> bool:
            await work.idle()
            current = await served(running)
            assert token_in(given) == token_in(own) == current
            info = given.stat()
            seen.add((info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)))
            return len(fake.issued_access_tokens) >= 2

        await running.eventually(second_token, within=30)
        shown = await status(running)
    assert seen == {(10001, 10002, 0o640)}
    mine = own.stat()
    assert (mine.st_uid, mine.st_gid, stat.S_IMODE(mine.st_mode)) == (
        os.geteuid(),
        os.getegid(),
        0o600,
    )
    assert shown["state"] == "ready"
    assert [s["ok"] for s in shown["sinks"]] == [True, True]


async def test_the_status_model_documents_every_field(tmp_path: Path) -> None:
    """/providers answers exactly the fields the OpenAPI models describe, sinks included."""
    clock = FakeClock()
    fake = FakeOAuth2(clients={"app": SECRET}, ttl=30.0, now=clock.wall)
    async with broker(clock, fake, config(f'{{path: "{tmp_path}/p.token"}}')) as (running, _):
        shown = await status(running)
    assert set(shown) == set(ProviderStatus.model_fields)
    assert set(shown["sinks"][0]) == set(SinkStatus.model_fields)
    ProviderStatus.model_validate(shown)
