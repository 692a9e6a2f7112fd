"""The state directory: crash-safe, private, tamper-evident refresh-token persistence."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from broker.engine.fingerprint import fingerprint
from broker.engine.state import StateStore
from broker.engine.state_file import PersistedState, StateError
from broker.ops.atomic import TEMP_SUFFIX

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "rt-7c1d9e0f-secret-refresh-token"
FP = fingerprint("oauth2", "https://idp.example/oauth/token", "app", "alice")
KEY = Fernet.generate_key()


def saved(store: StateStore) -> list[str]:
    """The providers that have a state file in *store*'s directory, sorted."""
    return sorted(path.stem for path in store.directory.glob("*.json") if path.is_file())


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def plant(path: Path, content: str) -> None:
    """Write a state file by hand, private like the broker's own."""
    path.write_text(content)
    path.chmod(0o600)


def corrupt_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.corrupt-*"))


# -- round trips -------------------------------------------------------------


def test_plaintext_round_trip(tmp_path: Path) -> None:
    """Without a key the token is stored as plaintext JSON and loads back."""
    store = StateStore(tmp_path)
    before = time.time()
    store.save("idp", FP, TOKEN)
    loaded = store.load("idp", FP)
    assert loaded is not None
    assert loaded.refresh_token == TOKEN
    assert before <= loaded.saved_at <= time.time()
    document = json.loads((tmp_path / "idp.json").read_text())
    assert document == {
        "version": 1,
        "provider": "idp",
        "fingerprint": FP,
        "saved_at": loaded.saved_at,
        "refresh_token": TOKEN,
    }


def test_encrypted_round_trip(tmp_path: Path) -> None:
    """With a key the file holds a Fernet token, not the refresh token, and loads back."""
    store = StateStore(tmp_path, key=KEY)
    store.save("idp", FP, TOKEN)
    raw = (tmp_path / "idp.json").read_text()
    assert TOKEN not in raw
    document = json.loads(raw)
    assert set(document) == {"version", "provider", "fingerprint", "saved_at", "encrypted"}
    assert document["provider"] == "idp"
    assert document["fingerprint"] == FP
    loaded = StateStore(tmp_path, key=KEY).load("idp", FP)
    assert loaded is not None
    assert loaded.refresh_token == TOKEN
    assert loaded.saved_at == document["saved_at"]


def test_latest_save_wins(tmp_path: Path) -> None:
    """Each save replaces the previous token."""
    store = StateStore(tmp_path, key=KEY)
    for n in range(1, 4):
        store.save("idp", FP, f"rt-{n}")
    loaded = store.load("idp", FP)
    assert loaded is not None
    assert loaded.refresh_token == "rt-3"


def test_missing_file_is_none(tmp_path: Path) -> None:
    """No state file means no persisted token, without a warning."""
    assert StateStore(tmp_path).load("idp", FP) is None


# -- permissions --------------------------------------------------------------


def test_creates_private_directory_and_files(tmp_path: Path) -> None:
    """A missing directory is created 0700 (parents too) and state files are 0600."""
    directory = tmp_path / "a" / "state"
    store = StateStore(directory)
    store.save("idp", FP, TOKEN)
    assert mode_of(directory) == 0o700
    assert mode_of(directory / "idp.json") == 0o600


@pytest.mark.parametrize("umask", [0o000, 0o002, 0o022, 0o277], ids=oct)
def test_a_new_directory_is_0700_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Created 0700 exactly: a permissive umask cannot open it up, a strange one
    (0277 takes the owner's write bit) cannot lock the broker out."""
    directory = tmp_path / "state"
    before = os.umask(umask)
    try:
        store = StateStore(directory)
    finally:
        os.umask(before)
    assert mode_of(directory) == 0o700
    store.save("idp", FP, TOKEN)


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o1777, 0o720, 0o702, 0o730], ids=oct)
def test_a_directory_others_can_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    """Whoever can write there can plant, swap or remove refresh tokens: StateError naming
    the path and mode, and nothing is written."""
    directory = tmp_path / "state"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(StateError) as caught:
        StateStore(directory)
    assert str(directory) in str(caught.value)
    assert oct(mode) in str(caught.value)
    assert list(directory.iterdir()) == []


def test_a_directory_opened_up_after_start_is_not_written(tmp_path: Path) -> None:
    """Every save checks again: a directory made group-writable later gets no token."""
    store = StateStore(tmp_path / "state")
    store.save("idp", FP, TOKEN)
    (tmp_path / "state").chmod(0o770)
    with pytest.raises(StateError) as caught:
        store.save("idp", FP, "a-newer-refresh-token")
    assert "0o770" in str(caught.value)
    (tmp_path / "state").chmod(0o700)
    loaded = store.load("idp", FP)
    assert loaded is not None
    assert loaded.refresh_token == TOKEN


def test_loose_permissions_warn_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A directory or file others can read (not write) is warned about once each."""
    caplog.set_level(logging.WARNING, logger="broker.state")
    tmp_path.chmod(0o755)
    store = StateStore(tmp_path)
    store.save("idp", FP, TOKEN)
    (tmp_path / "idp.json").chmod(0o644)
    assert store.load("idp", FP) is not None
    assert store.load("idp", FP) is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert str(tmp_path) in warnings[0]
    assert "0o755" in warnings[0]
    assert "idp.json" in warnings[1]
    assert "0o644" in warnings[1]
    assert TOKEN not in caplog.text


# -- files that must not be used -----------------------------------------------


def test_fingerprint_mismatch_is_none_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A token saved for another login is ignored but not moved aside or warned about."""
    caplog.set_level(logging.WARNING, logger="broker.state")
    store = StateStore(tmp_path, key=KEY)
    store.save("idp", FP, TOKEN)
    other = fingerprint("oauth2", "https://idp.example/oauth/token", "app", "bob")
    assert store.load("idp", other) is None
    assert listing(tmp_path) == ["idp.json"]
    assert not caplog.records


def test_corrupt_json_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Truncated JSON: None, a warning naming the file without the secret, file kept aside."""
    caplog.set_level(logging.DEBUG, logger="broker.state")
    store = StateStore(tmp_path)
    content = f'{{"version": 1, "provider": "idp", "refresh_token": "{TOKEN}'
    plant(tmp_path / "idp.json", content)
    assert store.load("idp", FP) is None
    assert not (tmp_path / "idp.json").exists()
    [aside] = corrupt_files(tmp_path)
    assert aside.name.startswith("idp.json.corrupt-")
    assert aside.read_text() == content
    assert abs(int(aside.name.rsplit("-", 1)[1]) - time.time()) < 60
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "idp.json" in warnings[0].getMessage()
    assert TOKEN not in caplog.text
    assert saved(store) == []


def test_second_corrupt_file_does_not_overwrite_first(tmp_path: Path) -> None:
    """Two bad files in the same second are both kept for forensics."""
    store = StateStore(tmp_path)
    for content in ("garbage-1", "garbage-2"):
        plant(tmp_path / "idp.json", content)
        assert store.load("idp", FP) is None
    assert sorted(p.read_text() for p in corrupt_files(tmp_path)) == ["garbage-1", "garbage-2"]


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"version": 2, "provider": "idp", "fingerprint": FP, "saved_at": 1.0, "refresh_token": "x"},
        {
            "version": 1,
            "provider": "other",
            "fingerprint": FP,
            "saved_at": 1.0,
            "refresh_token": "x",
        },
        {"version": 1, "provider": "idp", "saved_at": 1.0, "refresh_token": "x"},
        {
            "version": 1,
            "provider": "idp",
            "fingerprint": FP,
            "saved_at": True,
            "refresh_token": "x",
        },
        {"version": 1, "provider": "idp", "fingerprint": FP, "saved_at": 1.0},
        {"version": 1, "provider": "idp", "fingerprint": FP, "saved_at": 1.0, "refresh_token": ""},
        {"version": 1, "provider": "idp", "fingerprint": FP, "saved_at": 1.0, "refresh_token": 5},
        {"version": 1, "provider": "idp", "fingerprint": FP, "saved_at": 1.0, "encrypted": "x"},
    ],
    ids=[
        "not-object",
        "version",
        "provider",
        "no-fingerprint",
        "bool-saved-at",
        "no-token",
        "empty-token",
        "int-token",
        "encrypted-without-key",
    ],
)
def test_invalid_plaintext_documents(tmp_path: Path, document: object) -> None:
    """Well-formed JSON that is not a valid state file is treated as corrupt."""
    store = StateStore(tmp_path)
    plant(tmp_path / "idp.json", json.dumps(document))
    assert store.load("idp", FP) is None
    assert len(corrupt_files(tmp_path)) == 1


def test_wrong_key_is_none(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file encrypted with another key: None, warning without secrets, moved aside."""
    caplog.set_level(logging.DEBUG, logger="broker.state")
    StateStore(tmp_path, key=KEY).save("idp", FP, TOKEN)
    other_key = Fernet.generate_key()
    assert StateStore(tmp_path, key=other_key).load("idp", FP) is None
    assert len(corrupt_files(tmp_path)) == 1
    assert "decrypted" in caplog.text
    for secret in (TOKEN, KEY.decode(), other_key.decode()):
        assert secret not in caplog.text


def test_encrypted_file_copied_to_another_provider(tmp_path: Path) -> None:
    """An encrypted file renamed to another provider fails, even with its outer fields edited."""
    store = StateStore(tmp_path, key=KEY)
    store.save("alpha", FP, TOKEN)
    raw = (tmp_path / "alpha.json").read_text()
    plant(tmp_path / "beta.json", raw)
    assert store.load("beta", FP) is None
    edited = json.loads(raw)
    edited["provider"] = "gamma"
    plant(tmp_path / "gamma.json", json.dumps(edited))
    assert store.load("gamma", FP) is None
    assert store.load("alpha", FP) is not None
    assert saved(store) == ["alpha"]


def test_edited_outer_fingerprint_is_refused(tmp_path: Path) -> None:
    """The outer fingerprint must match the authenticated one inside the ciphertext."""
    store = StateStore(tmp_path, key=KEY)
    store.save("idp", FP, TOKEN)
    other = fingerprint("someone", "else")
    document = json.loads((tmp_path / "idp.json").read_text())
    document["fingerprint"] = other
    plant(tmp_path / "idp.json", json.dumps(document))
    assert store.load("idp", other) is None
    assert len(corrupt_files(tmp_path)) == 1


def test_plaintext_file_refused_when_key_configured(tmp_path: Path) -> None:
    """With a key, a plaintext file (anyone with write access could plant one) is refused."""
    StateStore(tmp_path).save("idp", FP, TOKEN)
    assert StateStore(tmp_path, key=KEY).load("idp", FP) is None
    assert len(corrupt_files(tmp_path)) == 1


def test_unreadable_entries_do_not_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A directory or a symlink where the state file should be: warning and None."""
    caplog.set_level(logging.WARNING, logger="broker.state")
    store = StateStore(tmp_path)
    (tmp_path / "dir.json").mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("{}")
    (tmp_path / "link.json").symlink_to(target)
    assert store.load("dir", FP) is None
    assert store.load("link", FP) is None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


# -- atomic writes ---------------------------------------------------------------


def test_no_temp_files_left_after_save(tmp_path: Path) -> None:
    """Successful saves leave exactly the final files behind."""
    store = StateStore(tmp_path, key=KEY)
    for n in range(5):
        store.save("idp", FP, f"rt-{n}")
        store.save("other", FP, f"rt-{n}")
    assert listing(tmp_path) == ["idp.json", "other.json"]
    assert saved(store) == ["idp", "other"]


def test_saves_intern_no_new_string_per_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save's random temporary name is never interned (as pathlib does with every name
    it parses): interning a new string per rotation made CPython resize its table of
    interned strings again and again, and the broker's memory grew with it (issue 12)."""
    store = StateStore(tmp_path, key=KEY)
    store.save("idp", FP, "rt-0")  # the constant names (directory, final file) once
    interned: list[str] = []
    real_intern = sys.intern

    def recording_intern(text: str) -> str:
        interned.append(text)
        return real_intern(text)

    monkeypatch.setattr(sys, "intern", recording_intern)
    for n in range(1, 4):
        store.save("idp", FP, f"rt-{n}")
    monkeypatch.undo()
    assert [text for text in interned if text.endswith(TEMP_SUFFIX)] == []
    assert listing(tmp_path) == ["idp.json"]


def _no_space(*args: object, **kwargs: object) -> None:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_save_keeps_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A save failing before the rename raises StateError, keeps the old file, removes its temp."""
    store = StateStore(tmp_path, key=KEY)
    store.save("idp", FP, "rt-old")
    before = (tmp_path / "idp.json").read_bytes()
    monkeypatch.setattr(os, failing, _no_space)
    with pytest.raises(StateError, match=r"idp\.json cannot be written: No space left"):
        store.save("idp", FP, "rt-new")
    monkeypatch.undo()
    assert listing(tmp_path) == ["idp.json"]
    assert (tmp_path / "idp.json").read_bytes() == before
    loaded = store.load("idp", FP)
    assert loaded is not None
    assert loaded.refresh_token == "rt-old"


def test_failed_directory_fsync_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If only the directory fsync fails, save raises but the final file is the complete new one."""
    store = StateStore(tmp_path, key=KEY)
    store.save("idp", FP, "rt-old")
    real_fsync = os.fsync
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the first fsync is the file's, the second the directory's
            _no_space()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StateError, match="cannot be written"):
        store.save("idp", FP, "rt-new")
    monkeypatch.undo()
    assert listing(tmp_path) == ["idp.json"]
    loaded = store.load("idp", FP)
    assert loaded is not None
    assert loaded.refresh_token == "rt-new"


def test_stale_temp_files_removed_at_start(tmp_path: Path) -> None:
    """Temp files a killed broker left long ago are removed; recent ones are left alone."""
    old = tmp_path / ".idp.json.0123456789abcdef.tmp"
    new = tmp_path / ".idp.json.fedcba9876543210.tmp"
    old.write_text("x")
    new.write_text("x")
    long_ago = time.time() - 3600
    os.utime(old, (long_ago, long_ago))
    StateStore(tmp_path)
    assert listing(tmp_path) == [new.name]


def test_delete(tmp_path: Path) -> None:
    """delete forgets a provider's token; deleting a missing one is fine."""
    store = StateStore(tmp_path)
    store.save("idp", FP, TOKEN)
    store.delete("idp")
    store.delete("idp")
    assert store.load("idp", FP) is None
    assert listing(tmp_path) == []


def test_empty_token_refused(tmp_path: Path) -> None:
    """Saving an empty refresh token is a bug in the caller, not a state to persist."""
    with pytest.raises(StateError, match="empty refresh token"):
        StateStore(tmp_path).save("idp", FP, "")


# -- construction, names, keys ------------------------------------------------------


def test_uncreatable_directory(tmp_path: Path) -> None:
    """A directory that cannot be created is a StateError naming it."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"state directory .*file/state cannot be created"):
        StateStore(blocker / "state")


def test_directory_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write check at construction turns an unwritable directory into a StateError."""
    real_open = os.open

    def deny(path: object, flags: int, mode: int = 0o777, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(StateError, match=r"is not writable: Permission denied"):
        StateStore(tmp_path)


def test_invalid_key_refused_without_echo(tmp_path: Path) -> None:
    """A malformed key is refused at construction and the message does not contain it."""
    bad = b"not-a-fernet-key-but-still-secret"
    with pytest.raises(StateError, match="not a valid Fernet key") as caught:
        StateStore(tmp_path, key=bad)
    assert bad.decode() not in str(caught.value)


@pytest.mark.parametrize(
    "name", ["", "../escape", "a/b", ".hidden", "Upper", "-dash", "a" * 64, "nul\0", "x.json"]
)
def test_invalid_provider_names_refused(tmp_path: Path, name: str) -> None:
    """Names outside [a-z0-9][a-z0-9_-]{0,62} are refused by every method: no path traversal."""
    store = StateStore(tmp_path / "state")
    with pytest.raises(StateError, match="invalid provider name"):
        store.load(name, FP)
    with pytest.raises(StateError, match="invalid provider name"):
        store.save(name, FP, TOKEN)
    with pytest.raises(StateError, match="invalid provider name"):
        store.delete(name)
    assert listing(tmp_path) == ["state"]
    assert listing(tmp_path / "state") == []


def test_longest_valid_provider_name(tmp_path: Path) -> None:
    """A 63-character name with digits, dashes and underscores is accepted."""
    name = "a0_-" + "b" * 59
    store = StateStore(tmp_path)
    store.save(name, FP, TOKEN)
    assert saved(store) == [name]


def test_repr_hides_token() -> None:
    """PersistedState's repr shows when it was saved but never the token."""
    persisted = PersistedState(refresh_token=TOKEN, saved_at=1.5)
    assert TOKEN not in repr(persisted)
    assert "1.5" in repr(persisted)


def test_fingerprint_is_stable_and_unambiguous() -> None:
    """Same parts give the same hex digest; different splits of the same text do not."""
    assert fingerprint("a", "b") == fingerprint("a", "b")
    assert len(fingerprint("a", "b")) == 64
    assert int(fingerprint("a"), 16) >= 0
    assert fingerprint("ab", "c") != fingerprint("a", "bc")
    assert fingerprint("a", "b") != fingerprint("b", "a")


# -- crash simulation --------------------------------------------------------------

CHILD = """
import os, sys
from pathlib import Path
from broker.engine.state import StateStore

store = StateStore(Path(sys.argv[1]), key=os.environ["BROKER_TEST_STATE_KEY"].encode())
n = int(sys.argv[2])
print("ready", flush=True)
while True:
    store.save("idp", sys.argv[3], f"rt-{n}")
    print(n, flush=True)
    n += 1
"""

ROUNDS = 30
ROUND_LIMIT = 5.0  # a hang guard only; a round normally takes well under 0.5 s


def _read_lines(fd: int, buffer: bytearray, wanted: int, deadline: float) -> None:
    """Read from *fd* into *buffer* until it holds *wanted* lines, EOF or the deadline."""
    while buffer.count(b"\n") < wanted:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        buffer += chunk


def test_sigkill_during_saves_never_loses_or_corrupts(tmp_path: Path) -> None:
    """SIGKILL at random moments mid-save: the file holds the last reported token or the next."""
    rng = random.Random(20251125)  # kill timing, not cryptography
    directory = tmp_path / "state"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BROKER_TEST_STATE_KEY": KEY.decode()}
    current = 0  # the number in the state file; 0 = no file yet
    progressed = 0
    for _ in range(ROUNDS):
        started = time.monotonic()
        with subprocess.Popen(
            [sys.executable, str(script), str(directory), str(current + 1), FP],
            stdout=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        ) as child:
            assert child.stdout is not None
            fd = child.stdout.fileno()
            buffer = bytearray()
            # Kill after 0 to 30 reported saves: the child is usually mid-save by then.
            _read_lines(fd, buffer, 1 + rng.randint(0, 30), started + ROUND_LIMIT)
            child.send_signal(signal.SIGKILL)
            _read_lines(fd, buffer, sys.maxsize, started + ROUND_LIMIT)
            assert child.wait() == -signal.SIGKILL
        assert time.monotonic() - started < ROUND_LIMIT
        lines = buffer.decode().splitlines()
        reported = [int(line) for line in lines[1:] if line.isdigit()]
        floor = reported[-1] if reported else current
        loaded = StateStore(directory, key=KEY).load("idp", FP)
        got = 0 if loaded is None else int(loaded.refresh_token.removeprefix("rt-"))
        assert got in (floor, floor + 1), (reported[-3:], got)
        progressed += got != current
        current = got
        leftovers = [p.name for p in directory.iterdir() if p.name != "idp.json"]
        # A kill between creating and renaming the temp file may leave it (removed at
        # a later start once stale); nothing else: no partial or corrupt final file.
        assert all(re.fullmatch(r"\.idp\.json\.[0-9a-f]{16}\.tmp", n) for n in leftovers)
    assert progressed >= ROUNDS // 2


def test_the_store_takes_its_time_from_the_clock_it_is_given(tmp_path: Path) -> None:
    """saved_at, and the name of a file moved aside, come from *wall*, not time.time."""
    store = StateStore(tmp_path / "state", wall=lambda: 1_800_000_000.25)
    store.save("idp", "fp", "rt-0123456789")
    saved = json.loads((tmp_path / "state" / "idp.json").read_text())
    (tmp_path / "state" / "idp.json").write_text("{not json")
    assert store.load("idp", "fp") is None  # corrupt: moved aside

    assert saved["saved_at"] == 1_800_000_000.25
    assert [p.name for p in (tmp_path / "state").iterdir() if "1800000000" in p.name]
