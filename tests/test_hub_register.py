"""``broker hub register`` against the fake Hub on a real socket: Hub's own registration
request, the id and secret in new 0600 files, a config snippet that references them, and the
secret never printed unless asked."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from broker.fakes.hub import DEMO_ADMIN_TOKEN, FakeHub
from broker.fakes.server import serve_in_thread
from tests.support import BROKER, ROOT

pytestmark = pytest.mark.smoke  # a CLI process and a real socket


def register(
    tmp_path: Path, url: str, *extra: str, token: str = DEMO_ADMIN_TOKEN
) -> subprocess.CompletedProcess[str]:
    admin = tmp_path / "admin-token"
    admin.write_text(token + "\n")
    return subprocess.run(
        [
            *BROKER,
            "hub",
            "register",
            "--url",
            url,
            "--name",
            "Broker on host-1",
            "--redirect-uri",
            "http://127.0.0.1:8181/login/callback",
            "--admin-token-file",
            str(admin),
            "--id-file",
            str(tmp_path / "id"),
            "--secret-file",
            str(tmp_path / "secret"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=os.environ.copy(),
        check=False,
    )


def test_a_service_is_registered_and_its_secret_kept_in_a_0600_file(tmp_path: Path) -> None:
    fake = FakeHub()
    with serve_in_thread(fake.app) as hub:
        done = register(tmp_path, hub)
        service_id = (tmp_path / "id").read_text().strip()
        secret = (tmp_path / "secret").read_text().strip()
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "id").stat().st_mode) == 0o600
    assert secret not in done.stdout + done.stderr
    assert f'client_secret: {{file: "{tmp_path / "secret"}"}}' in done.stdout
    assert "grant: authorization_code" in done.stdout
    service = fake.services[service_id]
    assert service.name == "Broker on host-1"
    assert service.redirect_uris == ("http://127.0.0.1:8181/login/callback",)
    assert service.trusted is False
    assert service.secret == secret  # what Hub gave is what the broker's config reads


def test_show_secret_prints_it_and_trusted_is_sent(tmp_path: Path) -> None:
    fake = FakeHub()
    with serve_in_thread(fake.app) as hub:
        done = register(tmp_path, hub, "--trusted", "--show-secret")
    secret = (tmp_path / "secret").read_text().strip()
    assert done.returncode == 0, done.stderr
    assert f"secret: {secret}" in done.stdout
    assert fake.services[(tmp_path / "id").read_text().strip()].trusted is True


def test_a_refused_admin_token_writes_nothing_and_is_not_echoed(tmp_path: Path) -> None:
    fake = FakeHub()
    with serve_in_thread(fake.app) as hub:
        done = register(tmp_path, hub, token="wrong-admin-token-0123456789")
    assert done.returncode == 1
    assert "Hub answered HTTP 401" in done.stderr or "Hub answered HTTP 403" in done.stderr
    assert "wrong-admin-token-0123456789" not in done.stdout + done.stderr
    assert not (tmp_path / "id").exists()
    assert not (tmp_path / "secret").exists()


def test_existing_files_are_not_overwritten_and_hub_unreachable_is_4(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("keep me\n")
    kept = register(tmp_path, "http://127.0.0.1:9")
    assert kept.returncode == 2
    assert (tmp_path / "secret").read_text() == "keep me\n"
    (tmp_path / "secret").unlink()
    unreachable = register(tmp_path, "http://127.0.0.1:9")
    assert unreachable.returncode == 4
    assert "cannot reach Hub at http://127.0.0.1:9" in unreachable.stderr
    cleartext = register(tmp_path, "http://hub.example.com")
    assert cleartext.returncode == 2
    assert "unencrypted" in cleartext.stderr
