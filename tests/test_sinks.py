"""File sinks: exact content per format, exact mode, atomic replacement, clean failures."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from broker.config.sinks import SinkConfig
from broker.config.yamlfile import ZeroPaddedInt, read_yaml
from broker.core.tokens import Token, token_etag
from broker.ops.atomic import TEMP_SUFFIX
from broker.ops.sinks import FileSink, SinkError, render, sh_quote
from tests.support import ROOT

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl-_x"
NOW = datetime(2026, 11, 25, 3, 14, 7, tzinfo=UTC).timestamp()
EXPIRES = NOW + 3600
MONOTONIC = 1000.0
"""The engine's clock at NOW."""


def token(access_token: str, expires_at_wall: float = EXPIRES) -> Token:
    """A token issued at NOW that expires at *expires_at_wall*."""
    return Token(
        access_token=access_token,
        obtained_at=MONOTONIC,
        expires_at=MONOTONIC + expires_at_wall - NOW,
        expires_at_wall=expires_at_wall,
        etag=token_etag(b"k" * 32, access_token),
    )


def sink(tmp_path: Path, **options: Any) -> FileSink:
    return FileSink(SinkConfig(path=tmp_path / "hiro.token", **options), "hiro")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX))


as_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason=f"giving a file to another user takes root; the tests run as uid {os.geteuid()}",
)

OWNER, GROUP = 10001, 10002
"""A uid and a gid no one on the test machine has: only root can give a file to them."""


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    yield
    os.umask(old)


# -- formats ---------------------------------------------------------------------------


def test_token_format_is_the_bare_token(tmp_path: Path) -> None:
    """format: token writes the token and nothing else (no newline)."""
    s = sink(tmp_path)
    s.write(token(TOKEN), MONOTONIC)
    assert s.path.read_bytes() == TOKEN.encode()


def test_json_format(tmp_path: Path) -> None:
    """format: json is GET /token's body, expires_in counted from the sink's clock."""
    s = sink(tmp_path, format="json")
    s.write(token(TOKEN, EXPIRES - 0.4), MONOTONIC)
    text = s.path.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 3599,
        "expires_at": "2026-11-25T04:14:06.600Z",
        "etag": token(TOKEN).etag,
    }
    assert text.encode() == token(TOKEN, EXPIRES - 0.4).json_body(MONOTONIC) + b"\n"


def test_env_format_exact(tmp_path: Path) -> None:
    """format: env writes three single-quoted KEY=value lines with the configured prefix."""
    s = sink(tmp_path, format="env", env_prefix="HIRO_TOKEN")
    s.write(token(TOKEN), MONOTONIC)
    assert s.path.read_text() == (
        f"HIRO_TOKEN='{TOKEN}'\n"
        "HIRO_TOKEN_TYPE='Bearer'\n"
        "HIRO_TOKEN_EXPIRES_AT='2026-11-25T04:14:07.000Z'\n"
    )


def test_env_format_sources_safely_in_sh(tmp_path: Path) -> None:
    """Quotes, $, backticks and spaces in a token survive sourcing verbatim and run nothing."""
    nasty = "a'b\"c $(touch pwned) `id` $HOME \\ ;x"
    s = sink(tmp_path, format="env")
    s.write(token(nasty), MONOTONIC)
    sh = shutil.which("sh")
    assert sh is not None
    result = subprocess.run(
        [sh, "-c", '. "$1" && printf %s "$TOKEN|$TOKEN_TYPE|$TOKEN_EXPIRES_AT"', "sh", s.path],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == f"{nasty}|Bearer|2026-11-25T04:14:07.000Z"
    assert not (tmp_path / "pwned").exists()


def test_sh_quote() -> None:
    """Single quotes are closed, escaped and reopened."""
    assert sh_quote("it's") == "'it'\\''s'"
    assert sh_quote("") == "''"


def test_render_expired_token_has_zero_expires_in() -> None:
    """expires_in never goes negative."""
    config = SinkConfig(path=Path("/x/t"), format="json")
    assert json.loads(render(config, token(TOKEN, NOW - 5), MONOTONIC))["expires_in"] == 0


# -- file mode --------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_077")
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o400])
def test_file_has_exactly_the_configured_mode(tmp_path: Path, mode: int) -> None:
    """The file gets the configured mode whatever the umask, on first write and on replace."""
    s = sink(tmp_path, mode=mode)
    s.write(token(TOKEN), MONOTONIC)
    assert mode_of(s.path) == mode
    s.write(token(TOKEN + "2"), MONOTONIC)
    assert mode_of(s.path) == mode
    assert s.path.read_text() == TOKEN + "2"


# -- owner and group ---------------------------------------------------------------------------


@as_root
@pytest.mark.usefixtures("umask_077")
def test_owner_and_group_are_the_files_from_its_first_moment(tmp_path: Path) -> None:
    """The file has the configured owner, group and mode whenever a reader looks, through
    300 replacements: they are set on the temporary file before its rename."""
    s = sink(tmp_path, owner=OWNER, group=GROUP, mode=0o640)
    s.write(token("first-token"), MONOTONIC)
    done = threading.Event()
    seen: set[tuple[int, int, int]] = set()

    def reader() -> None:
        while not done.is_set():
            info = os.stat(s.path)
            seen.add((info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            s.write(token(f"token-{i:03d}"), MONOTONIC)
    finally:
        done.set()
        thread.join()
    assert seen == {(OWNER, GROUP, 0o640)}
    assert s.path.read_text() == "token-299"
    assert leftovers(tmp_path) == []


@as_root
def test_owner_alone_keeps_the_brokers_group_and_group_alone_its_owner(tmp_path: Path) -> None:
    """-1 for what is not configured: the broker's own."""
    owned = FileSink(SinkConfig(path=tmp_path / "owned", owner=OWNER), "hiro")
    grouped = FileSink(SinkConfig(path=tmp_path / "grouped", group=GROUP), "hiro")
    for s in (owned, grouped):
        s.check()
        s.write(token(TOKEN), MONOTONIC)
    assert (owned.path.stat().st_uid, owned.path.stat().st_gid) == (OWNER, os.getegid())
    assert (grouped.path.stat().st_uid, grouped.path.stat().st_gid) == (os.geteuid(), GROUP)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grouped", "owned"]


NOT_ROOT = 65534
"""The uid and gid a broker that is not root runs as below (nobody and nogroup on Debian)."""

AS_NOT_ROOT = """
import json, os, sys
from pathlib import Path

from broker.config.sinks import SinkConfig
from broker.core.tokens import Token
from broker.ops.sinks import FileSink, SinkError

directory, uid, other = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sinks = {
    name: FileSink(SinkConfig(path=directory / name, **options), "hiro")
    for name, options in {
        "other-owner": {"owner": other},
        "other-group": {"group": other},
        "own-owner": {"owner": uid},
        "own-group": {"group": uid},
    }.items()
}
token = Token(access_token="tok-0123456789", obtained_at=0.0, expires_at=3600.0,
              expires_at_wall=4e9, etag='"e"')
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
found = {}
for name, sink in sinks.items():
    steps = {}
    for step, run in (("check", sink.check), ("write", lambda: sink.write(token, 0.0))):
        try:
            run()
            steps[step] = "ok"
        except SinkError as exc:
            steps[step] = [exc.key, str(exc)]
    info = sink.path.stat() if sink.path.exists() else None
    steps["file"] = None if info is None else [info.st_uid, info.st_gid]
    found[name] = steps
print(json.dumps(found))
"""


@as_root
def test_a_broker_that_is_not_root_refuses_to_give_files_away() -> None:
    """Not root, the broker refuses an owner other than its uid and a group it is not in,
    at the start check and at every write, naming the sink and the key; its own uid and
    group are fine. (A real process that gave up root, as the broker would run.)"""
    directory = Path(tempfile.mkdtemp(prefix="broker-sinks-not-root-"))
    try:
        os.chown(directory, NOT_ROOT, NOT_ROOT)
        result = subprocess.run(
            [sys.executable, "-c", AS_NOT_ROOT, str(directory), str(NOT_ROOT), str(OWNER)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        found = json.loads(result.stdout)
        left = sorted(p.name for p in directory.iterdir())
    finally:
        shutil.rmtree(directory)
    owner = (
        f"owner {OWNER} needs the broker to run as root (it runs as uid {NOT_ROOT});"
        " leave owner out to keep the broker's own"
    )
    group = (
        f"group {OWNER} needs the broker to run as root or in that group (it runs as uid"
        f" {NOT_ROOT}, not in group {OWNER})"
    )
    refused = {
        "other-owner": [
            "owner",
            f"token sink {directory}/other-owner for provider 'hiro': {owner}",
        ],
        "other-group": [
            "group",
            f"token sink {directory}/other-group for provider 'hiro': {group}",
        ],
    }
    assert found == {
        "other-owner": {
            "check": refused["other-owner"],
            "write": refused["other-owner"],
            "file": None,
        },
        "other-group": {
            "check": refused["other-group"],
            "write": refused["other-group"],
            "file": None,
        },
        "own-owner": {"check": "ok", "write": "ok", "file": [NOT_ROOT, NOT_ROOT]},
        "own-group": {"check": "ok", "write": "ok", "file": [NOT_ROOT, NOT_ROOT]},
    }
    assert left == ["own-group", "own-owner"], "no trial or temporary file left"


# -- atomic replacement -------------------------------------------------------------------


def test_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    """500 replacements while a reader loops: every read is exactly one written version."""
    s = sink(tmp_path, format="json")
    versions = [f"v{i:03d}-" + chr(97 + i % 26) * (200 + (i * 977) % 6000) for i in range(501)]
    expected = {render(s.config, token(v), MONOTONIC) for v in versions}
    s.write(token(versions[0]), MONOTONIC)
    done = threading.Event()
    seen: list[bytes] = []
    bad: list[bytes] = []

    def reader() -> None:
        while not done.is_set():
            data = s.path.read_bytes()
            (seen if data in expected else bad).append(data)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in versions[1:]:
            s.write(token(version), MONOTONIC)
    finally:
        done.set()
        thread.join()
    assert bad == []
    assert len(seen) > 50
    assert len(set(seen)) > 1
    assert s.path.read_bytes() == render(s.config, token(versions[-1]), MONOTONIC)
    assert leftovers(tmp_path) == []


def test_older_generation_does_not_overwrite_newer(tmp_path: Path) -> None:
    """With generations, a late write of an older token is skipped."""
    s = sink(tmp_path)
    s.write(token("new-token"), MONOTONIC, generation=2)
    s.write(token("old-token"), MONOTONIC, generation=1)
    assert s.path.read_text() == "new-token"
    s.write(token("newer-token"), MONOTONIC, generation=3)
    assert s.path.read_text() == "newer-token"


# -- failures --------------------------------------------------------------------------------


def test_failed_write_cleans_up_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync error removes the temp file, keeps the old file, names the path, not the token."""
    s = sink(tmp_path)
    s.write(token("previous-token"), MONOTONIC)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(SinkError) as caught:
        s.write(token(TOKEN), MONOTONIC)
    message = str(caught.value)
    assert str(s.path) in message
    assert "Input/output error" in message
    assert TOKEN not in message
    assert "previous-token" not in message
    assert leftovers(tmp_path) == []
    assert s.path.read_text() == "previous-token"


def test_failed_replace_cleans_up(tmp_path: Path) -> None:
    """If the rename fails (the path is a non-empty directory), no temp file is left behind."""
    s = sink(tmp_path)
    s.path.mkdir()
    (s.path / "inside").write_text("x")
    with pytest.raises(SinkError, match=r"hiro\.token.*cannot be written") as caught:
        s.write(token(TOKEN), MONOTONIC)
    assert TOKEN not in str(caught.value)
    assert leftovers(tmp_path) == []


def test_missing_directory(tmp_path: Path) -> None:
    """Writing into a directory that does not exist fails with the path in the message."""
    s = FileSink(SinkConfig(path=tmp_path / "nope" / "t"), "hub")
    with pytest.raises(SinkError, match=r"nope/t for provider 'hub': cannot be written"):
        s.write(token(TOKEN), MONOTONIC)


@pytest.mark.parametrize("bad", ["", "two\nlines", "nul\x00byte", "cr\rhere"])
def test_refuses_empty_or_multiline_tokens(tmp_path: Path, bad: str) -> None:
    """A token that would corrupt the formats is refused without being echoed."""
    s = sink(tmp_path)
    with pytest.raises(SinkError, match="refusing") as caught:
        s.write(token(bad), MONOTONIC)
    assert "lines" not in str(caught.value)
    assert "byte" not in str(caught.value)
    assert not s.path.exists()


# -- check() ------------------------------------------------------------------------------------


def test_check_passes_and_leaves_nothing(tmp_path: Path) -> None:
    """A writable directory passes; the probe file is removed."""
    sink(tmp_path).check()
    assert list(tmp_path.iterdir()) == []


def test_check_missing_directory(tmp_path: Path) -> None:
    """A missing directory is reported at start, naming it."""
    s = FileSink(SinkConfig(path=tmp_path / "run" / "t"), "hub")
    with pytest.raises(SinkError, match=r"directory .*/run does not exist"):
        s.check()


def test_check_path_is_a_directory(tmp_path: Path) -> None:
    """A sink path that is a directory is reported at start."""
    (tmp_path / "hiro.token").mkdir()
    with pytest.raises(SinkError, match="it is a directory"):
        sink(tmp_path).check()


def test_check_unwritable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory refusing new files fails the check with the OS reason."""
    real_open = os.open

    def deny(path: Any, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(TEMP_SUFFIX):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(SinkError, match="is not writable: Permission denied"):
        sink(tmp_path).check()


def test_check_removes_only_stale_temps_of_this_sink(tmp_path: Path) -> None:
    """Old temp files of this sink go (they may hold a token); fresh ones and others stay."""
    stale = tmp_path / f".hiro.token.aaaa{TEMP_SUFFIX}"
    fresh = tmp_path / f".hiro.token.bbbb{TEMP_SUFFIX}"
    other = tmp_path / f".hub.token.cccc{TEMP_SUFFIX}"
    for path in (stale, fresh, other):
        path.write_text("t")
    now = time.time()  # the file system's clock, which the mtimes come from
    for path in (stale, other):
        os.utime(path, (now - 3600, now - 3600))
    os.utime(fresh, (now - 5, now - 5))
    sink(tmp_path).check()
    assert leftovers(tmp_path) == sorted([fresh.name, other.name])


# -- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "mode"),
    [
        ("mode: 0640", 0o640),  # a leading zero means octal, as for chmod (not YAML 1.2)
        ("mode: 0400", 0o400),  # ... else this would be decimal 400, mode 0620
        ("mode: 00600", 0o600),
        ("mode: 416", 0o640),
        ("mode: '0640'", 0o640),
        ("mode: '0o640'", 0o640),
        ("mode: 0o640", 0o640),  # YAML 1.2 octal int
        ("mode: '600'", 0o600),
        ("mode: 0", 0),
    ],
)
def test_mode_accepts_yaml_ints_and_octal_strings(raw: str, mode: int) -> None:
    """Modes may be octal ints (0640, 0o640), decimal ints or octal strings, as the
    config loader reads them."""
    data = read_yaml(f"path: /run/broker/t\n{raw}\n", "test.yaml").data
    assert SinkConfig.model_validate(data).mode == mode


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (640, "640 is decimal; write 0640"),
        (0o1777, "between 0 and 0777"),
        (-1, "between 0 and 0777"),
        ("rw-r-----", "octal file mode"),
        ("0999", "octal file mode"),
        (ZeroPaddedInt(999), "octal file mode"),  # `mode: 0999` in the YAML
        (True, "file mode"),
    ],
)
def test_mode_rejects(value: object, message: str) -> None:
    """Out-of-range or non-octal modes are refused with a hint."""
    with pytest.raises(ValidationError, match=message):
        SinkConfig.model_validate({"path": "/run/t", "mode": value})


def test_owner_and_group_by_name_or_number() -> None:
    """Names are looked up when the config is read; numbers taken as they are; an unknown
    name is an error naming it."""
    root_user, root_group = pwd.getpwuid(0).pw_name, grp.getgrgid(0).gr_name
    named = SinkConfig.model_validate({"path": "/t", "owner": root_user, "group": root_group})
    assert (named.owner, named.group) == (0, 0)
    numbered = SinkConfig.model_validate({"path": "/t", "owner": "10001", "group": 10002})
    assert (numbered.owner, numbered.group) == (10001, 10002)
    assert SinkConfig.model_validate({"path": "/t"}).owner is None
    with pytest.raises(ValidationError, match="no user named 'no-such-user-b7' on this host"):
        SinkConfig.model_validate({"path": "/t", "owner": "no-such-user-b7"})
    with pytest.raises(ValidationError, match="no group named 'no-such-group-b7' on this host"):
        SinkConfig.model_validate({"path": "/t", "group": "no-such-group-b7"})
    with pytest.raises(ValidationError, match="from 0 to 4294967294"):
        SinkConfig.model_validate({"path": "/t", "owner": -1})


def test_config_defaults_and_strictness() -> None:
    """Defaults are token/0600/TOKEN; unknown keys and bad prefixes are refused; it is frozen."""
    config = SinkConfig.model_validate({"path": "/run/broker/hiro.token"})
    assert (config.format, config.mode, config.env_prefix) == ("token", 0o600, "TOKEN")
    with pytest.raises(ValidationError, match="Extra inputs"):
        SinkConfig.model_validate({"path": "/t", "colour": "red"})
    for prefix in ("1TOKEN", "MY-TOKEN", "", "A B"):
        with pytest.raises(ValidationError, match="shell variable name"):
            SinkConfig.model_validate({"path": "/t", "env_prefix": prefix})
    with pytest.raises(ValidationError, match="must name a file"):
        SinkConfig.model_validate({"path": "/"})
    with pytest.raises(ValidationError, match="frozen"):
        config.mode = 0o644  # type: ignore[misc]
