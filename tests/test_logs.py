"""Logging: text and JSON lines, uvicorn routed through them, secrets redacted."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import logging.config
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
import uvicorn.config

from broker import cli
from broker.core.errors import ConfigError
from broker.fakes.server import serve_in_thread
from broker.ops.audit import AuditTrail
from broker.ops.logs import (
    CLIENT_LOGGERS,
    REDACTED,
    TRACE,
    UVICORN_LOGGERS,
    JsonFormatter,
    LogFormat,
    SecretFilter,
    TextFormatter,
    _timestamp,
    add_secret_filter,
    capture_python_reports,
    configure_logging,
    holding_records,
    level_number,
    set_level,
    sole_handler,
)
from tests.support import settings_from

SECRET = "pw-93d2c7e4-user-password"
MOMENT = datetime(2026, 11, 25, 3, 14, 7, 123456, tzinfo=UTC).timestamp()
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

log = logging.getLogger("broker.manager")
lib_log = logging.getLogger("somelib.client")  # a third-party library's logger


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the root and uvicorn loggers back as they were after each test."""
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved = {
        name: (list(lg.handlers), lg.level, lg.propagate)
        for name in (*UVICORN_LOGGERS, *CLIENT_LOGGERS)
        for lg in [logging.getLogger(name)]
    }
    yield
    for handler in root.handlers[:]:
        if handler not in saved_root[0]:
            root.removeHandler(handler)
    root.setLevel(saved_root[1])
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def record(
    msg: str, *args: object, exc: bool = False, name: str = "broker.manager", **extra: Any
) -> logging.LogRecord:
    """A record as ``logging.getLogger(name).info(msg, *args, extra=extra)`` makes it, at MOMENT."""
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    rec = log.makeRecord(name, logging.INFO, "f.py", 1, msg, args, exc_info, extra=extra)
    rec.created = MOMENT
    return rec


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- formatters ---------------------------------------------------------------------


def test_text_line_exact() -> None:
    """Text: RFC 3339 UTC seconds, level, logger, the rendered message."""
    line = TextFormatter().format(record("%s: new token valid for %d s", "hiro", 3600))
    assert line == "2026-11-25T03:14:07Z INFO broker.manager hiro: new token valid for 3600 s"


def test_text_appends_extra_fields() -> None:
    """Extra fields follow the message as key=value, quoted when they contain spaces."""
    line = TextFormatter().format(
        record("new token", provider="hiro", duration_ms=12, reason="on demand")
    )
    assert line.endswith('new token provider=hiro duration_ms=12 reason="on demand"')


def test_text_is_one_line_even_with_newlines_and_tracebacks() -> None:
    """Line breaks in the message and the traceback are escaped: one event, one line."""
    line = TextFormatter().format(record("first\nforged 2026 INFO line", exc=True))
    assert "\n" not in line
    assert "first\\nforged" in line
    assert "Traceback (most recent call last):\\n" in line
    assert line.endswith("ValueError: boom")


def test_json_fields() -> None:
    """JSON: ts (RFC 3339 UTC, ms), level, logger, msg and extra fields at the top level."""
    doc = json.loads(
        JsonFormatter().format(
            record("%s: new token", "hiro", provider="hiro", duration_ms=12, event="refresh")
        )
    )
    assert doc == {
        "ts": "2026-11-25T03:14:07.123Z",
        "level": "INFO",
        "logger": "broker.manager",
        "msg": "hiro: new token",
        "provider": "hiro",
        "duration_ms": 12,
        "event": "refresh",
    }


def test_json_exception() -> None:
    """An exception gives exc_type and the whole traceback as one string."""
    doc = json.loads(JsonFormatter().format(record("failed", exc=True)))
    assert doc["exc_type"] == "ValueError"
    assert doc["exc"].startswith("Traceback (most recent call last):\n")
    assert doc["exc"].endswith("ValueError: boom")


def test_json_clashing_and_odd_extras() -> None:
    """An extra named like a core key is renamed; values JSON cannot encode become strings."""
    doc = json.loads(JsonFormatter().format(record("m", level="custom", path=io.StringIO)))
    assert doc["level"] == "INFO"
    assert doc["extra_level"] == "custom"
    assert doc["path"] == str(io.StringIO)


# -- configure_logging --------------------------------------------------------------


def test_configure_json_lines_parse() -> None:
    """Every event is one JSON object per line; levels below the threshold are dropped."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    log.debug("hidden")
    log.info("new token", extra={"provider": "hiro", "duration_ms": 12, "event": "refresh"})
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("%s: unexpected error", "hiro")
    first, second = json_lines(out)
    assert RFC3339_MS.match(first["ts"])
    assert first["msg"] == "new token"
    assert (first["provider"], first["duration_ms"], first["event"]) == ("hiro", 12, "refresh")
    assert second["level"] == "ERROR"
    assert second["msg"] == "hiro: unexpected error"
    assert second["exc_type"] == "KeyError"
    assert "raise KeyError" in second["exc"]


def test_configure_text_one_line_per_event() -> None:
    """Text mode writes exactly one line per event, tracebacks included."""
    out = io.StringIO()
    configure_logging("debug", "text", out)
    log.debug("one")
    log.warning("two\nstill two")
    try:
        raise ValueError("three")
    except ValueError:
        log.exception("three")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ DEBUG broker.manager one$", lines[0])
    assert lines[1].endswith("WARNING broker.manager two\\nstill two")
    assert lines[2].endswith("ValueError: three")


def test_configure_twice_replaces_the_handler() -> None:
    """A second call (reload, tests) does not duplicate lines; the new stream gets them."""
    old, new = io.StringIO(), io.StringIO()
    configure_logging("info", "text", old)
    configure_logging("info", "json", new)
    log.info("once")
    assert old.getvalue() == ""
    assert [doc["msg"] for doc in json_lines(new)] == ["once"]


def test_uvicorn_loggers_use_the_same_handler() -> None:
    """Even after uvicorn's own dictConfig, its records come out in our format, once."""
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    out = io.StringIO()
    configure_logging("info", "json", out)
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]", 42, extra={"color_message": "\x1b[36m42\x1b[0m"}
    )
    logging.getLogger("uvicorn").warning("plain uvicorn")
    docs = json_lines(out)
    assert [(d["logger"], d["msg"]) for d in docs] == [
        ("uvicorn.error", "Started server process [42]"),
        ("uvicorn", "plain uvicorn"),
    ]
    assert "color_message" not in docs[0]
    for name in UVICORN_LOGGERS:
        assert logging.getLogger(name).handlers == []


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_character_that_breaks_a_line_is_written_raw(fmt: LogFormat) -> None:
    """Every line break str.splitlines knows (not only \\n: form feed, NEL, the Unicode line
    and paragraph separators ...), in the message, an extra field and a traceback, is
    escaped: one record, one line, whoever splits it; JSON gives the text back unchanged."""
    odd = "a\nb\rc\x0bd\x0ce\x1cf\x1dg\x1eh\x85i\u2028j\u2029k"
    out = io.StringIO()
    configure_logging("info", fmt, out)
    lib_log.warning("message %s", odd, extra={"field": odd})
    try:
        raise ValueError(odd)
    except ValueError:
        lib_log.exception("failed")
    lines = out.getvalue().split("\n")[:-1]
    assert len(lines) == 2
    for line in lines:
        assert line.splitlines() == [line], line
    if fmt == "json":
        first, second = json_lines(out)
        assert (first["msg"], first["field"]) == (f"message {odd}", odd)
        assert second["exc"].endswith(f"ValueError: {odd}")


def test_arguments_that_do_not_fit_are_one_line_not_a_logging_error() -> None:
    """Another library's bad %-arguments: its message and arguments on one line (redacted
    like any), where logging would report a multi-line "--- Logging error ---" on stderr
    (the formatter raised)."""
    why = "not enough arguments for format string"
    tail = f" (arguments that do not fit it: ('[redacted]',): {why})"
    bad = record("two %s %s", SECRET, name="somelib.client")
    assert SecretFilter(lambda: [SECRET]).filter(bad)
    assert TextFormatter().format(bad).endswith(f"somelib.client two %s %s{tail}")
    assert json.loads(JsonFormatter().format(bad))["msg"] == f"two %s %s{tail}"
    unscanned = record("one %d", "x")  # the broker's own, not scanned: still one line
    why = "%d format: a real number is required, not str"
    line = TextFormatter().format(unscanned)
    assert line.endswith(f"one %d (arguments that do not fit it: ('x',): {why})")


def test_records_held_while_the_config_is_read_are_written_in_its_format() -> None:
    """The config file's own warnings, made before logging is set up, come out as lines of
    the configured format once it is, and only as far as its level lets them."""
    with holding_records() as held:
        logging.getLogger("broker.config").warning("config.yaml:2: a deprecated key")
        logging.getLogger("broker.config").info("not at warning")
    out = io.StringIO()
    configure_logging("info", "json", out)
    held.replay()
    assert [(d["logger"], d["msg"]) for d in json_lines(out)] == [
        ("broker.config", "config.yaml:2: a deprecated key")
    ]


@pytest.fixture
def python_reports() -> Iterator[None]:
    """Python's hooks put back after a test that routes them into logging."""
    hooks = (sys.excepthook, threading.excepthook, warnings.showwarning)
    yield
    logging.captureWarnings(False)
    sys.excepthook, threading.excepthook, warnings.showwarning = hooks


@pytest.mark.usefixtures("python_reports")
def test_an_uncaught_exception_and_a_warning_are_one_record_each() -> None:
    """What Python itself would print over several lines (an uncaught traceback, a warning
    with its source line) is one JSON record each."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    capture_python_reports()
    try:
        raise RuntimeError("a bug\nwith two lines")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    thread = threading.Thread(target=lambda: 1 / 0, name="worker")
    thread.start()
    thread.join()
    warnings.showwarning(UserWarning("careful"), UserWarning, "lib.py", 3, line="x = 1\n")
    crash, in_thread, warned = json_lines(out)
    assert (crash["logger"], crash["level"], crash["exc_type"]) == (
        "py.uncaught",
        "CRITICAL",
        "RuntimeError",
    )
    assert crash["exc"].endswith("RuntimeError: a bug\nwith two lines")
    assert in_thread["msg"] == "uncaught exception in thread worker"
    assert in_thread["exc_type"] == "ZeroDivisionError"
    assert warned["logger"] == "py.warnings"
    assert "UserWarning: careful" in warned["msg"]
    assert len(out.getvalue().splitlines()) == 3


# -- SecretFilter --------------------------------------------------------------------


def test_secret_filter_redacts_message_args_extra_and_exception() -> None:
    """A configured secret is replaced wherever it appears in the record."""
    out = io.StringIO()
    configure_logging("info", "json", out, secrets=lambda: [SECRET, "cs-client-secret"])
    # (Not "password=": that word is 8 characters of SECRET, so it is redacted too.)
    lib_log.info("login with %s", SECRET, extra={"body": f"secret={SECRET}", "n": [SECRET, 3]})
    try:
        raise RuntimeError(f"rejected {SECRET}")
    except RuntimeError:
        lib_log.exception("failed")
    text = out.getvalue()
    assert SECRET not in text
    first, second = json_lines(out)
    assert first["msg"] == f"login with {REDACTED}"
    assert first["body"] == f"secret={REDACTED}"
    assert first["n"] == [REDACTED, 3]
    assert f"RuntimeError: rejected {REDACTED}" in second["exc"]
    assert second["exc_type"] == "RuntimeError"


def test_secret_filter_reads_secrets_per_record_and_ignores_short_ones() -> None:
    """The secrets callable is consulted each time; values under 8 characters are left alone."""
    current = ["ab", ""]
    secret_filter = SecretFilter(lambda: current)
    first = record("ab is short: %s", "abc", name="somelib.client")
    assert secret_filter.filter(first)
    assert first.getMessage() == "ab is short: abc"
    current.append("rotated-rt-0001")
    second = record("got rotated-rt-0001 and rotated-rt-0001", name="somelib.client")
    assert secret_filter.filter(second)
    assert second.getMessage() == f"got {REDACTED} and {REDACTED}"


def test_secret_filter_longest_secret_first() -> None:
    """A secret that contains another is redacted whole, leaving no fragment."""
    secret_filter = SecretFilter(lambda: ["abcd", "xxabcdyy"])
    rec = record("t=xxabcdyy", name="somelib.client")
    secret_filter.filter(rec)
    assert rec.getMessage() == f"t={REDACTED}"


def test_secret_filter_redacts_every_spelling_and_piece() -> None:
    """Another library quoting a request: the Basic credentials, a form body, a JSON body,
    a piece of 8 of the password: none of it is written, the text around it is."""
    password = "pa ss+w%rd:1"
    basic = base64.b64encode(f"app:{quote_plus(password)}".encode()).decode()
    out = io.StringIO()
    configure_logging("debug", "json", out, secrets=lambda: [password, "cs-6f1e0a9b-client"])
    lib_log.warning("sent Authorization: Basic %s", basic)
    lib_log.warning("sent grant_type=password&password=%s&x=1", quote_plus(password))
    lib_log.warning("sent %s", json.dumps({"password": password}), extra={"cut": password[:8]})
    docs = json_lines(out)
    assert [d["msg"] for d in docs] == [
        f"sent Authorization: Basic {REDACTED}",
        f"sent grant_type=password&password={REDACTED}&x=1",
        f'sent {{"password": "{REDACTED}"}}',
    ]
    assert docs[2]["cut"] == REDACTED


def test_secret_filter_follows_rotation() -> None:
    """A token that is no longer held is no longer redacted; its successor is at once."""
    held = ["rt-0000-first-token"]
    secret_filter = SecretFilter(lambda: held)
    first = record("old rt-0000-first-token", name="somelib.client")
    secret_filter.filter(first)
    assert first.getMessage() == f"old {REDACTED}"
    held[:] = ["rt-1111-second-token"]
    second = record("rt-0000-first-token rt-1111-second-token", name="somelib.client")
    secret_filter.filter(second)
    assert second.getMessage() == f"rt-0000-first-token {REDACTED}"


def test_secret_filter_survives_a_broken_source() -> None:
    """If the secrets callable raises, the record still goes out (unredacted by design)."""

    def broken() -> list[str]:
        raise RuntimeError("config gone")

    rec = record("hello")
    assert SecretFilter(broken).filter(rec)
    assert rec.getMessage() == "hello"


def test_add_secret_filter_later_and_remove() -> None:
    """A filter added after configure_logging redacts until its remover is called."""
    out = io.StringIO()
    configure_logging("info", "text", out)
    remove = add_secret_filter(lambda: ["at-5e1f-access-token"])
    lib_log.info("served at-5e1f-access-token")
    remove()
    lib_log.info("again at-5e1f-access-token")
    first, second = out.getvalue().splitlines()
    assert first.endswith(f"served {REDACTED}")
    assert second.endswith("again at-5e1f-access-token")


def test_secret_filter_trusts_the_brokers_own_loggers() -> None:
    """broker.* records are not scanned (they never hold secrets; scanning is O(providers))."""
    stream = io.StringIO()
    configure_logging("info", stream=stream, secrets=lambda: [SECRET])
    log.info("not scanned %s", SECRET)
    lib_log.info("scanned %s", SECRET)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith(f"not scanned {SECRET}")
    assert lines[1].endswith("scanned [redacted]")


LEVEL_TABLE = [
    # log_level, root, httpx, httpcore, uvicorn.error (connection lines at TRACE)
    ("error", logging.ERROR, logging.WARNING, logging.WARNING, logging.ERROR),
    ("warning", logging.WARNING, logging.WARNING, logging.WARNING, logging.WARNING),
    ("info", logging.INFO, logging.WARNING, logging.WARNING, logging.INFO),
    ("debug", logging.DEBUG, logging.DEBUG, logging.WARNING, logging.DEBUG),
    ("trace", TRACE, TRACE, TRACE, TRACE),
]


@pytest.mark.parametrize(("level", "root", "httpx", "httpcore", "uvicorn"), LEVEL_TABLE)
def test_each_level_and_the_libraries_that_speak_at_it(
    level: str, root: int, httpx: int, httpcore: int, uvicorn: int
) -> None:
    """httpx's line per request from debug on, httpcore's internals only at trace,
    uvicorn at the level asked; its ASGI message trace (paths, query strings) never."""
    configure_logging(level, stream=io.StringIO())
    assert logging.getLogger().getEffectiveLevel() == root
    assert logging.getLogger("httpx").getEffectiveLevel() == httpx
    assert logging.getLogger("httpcore.connection").getEffectiveLevel() == httpcore
    assert logging.getLogger("httpcore.http11").getEffectiveLevel() == httpcore
    # uvicorn's protocols test the logger's own level, not the effective one.
    assert logging.getLogger("uvicorn.error").level == uvicorn
    assert not logging.getLogger("uvicorn.asgi").isEnabledFor(TRACE)


def test_debug_writes_httpx_lines_but_not_httpcore_internals() -> None:
    """The records each library makes, as they make them: at debug httpx's request line
    and the broker's debug lines are written, httpcore's steps are not; trace adds them."""
    for level, wanted in (("debug", 2), ("trace", 4)):
        out = io.StringIO()
        configure_logging(level, "json", out)
        log.debug("a debug line of the broker's")
        logging.getLogger("httpx").info('HTTP Request: POST https://idp/token "HTTP/1.1 200 OK"')
        logging.getLogger("httpcore.connection").debug("connect_tcp.started host='idp'")
        logging.getLogger("uvicorn.error").log(TRACE, "127.0.0.1:5000 - HTTP connection made")
        docs = json_lines(out)
        assert [d["logger"] for d in docs] == [
            "broker.manager",
            "httpx",
            "httpcore.connection",
            "uvicorn.error",
        ][:wanted], level
    assert docs[-1]["level"] == "TRACE"


def test_a_reload_moves_uvicorn_and_the_client_libraries_too() -> None:
    """uvicorn sets its loggers' levels once, at start: set_level (a reload) sets them again."""
    configure_logging("info", stream=io.StringIO())
    set_level("trace")
    assert logging.getLogger("uvicorn.error").level == TRACE
    assert logging.getLogger("httpcore").getEffectiveLevel() == TRACE
    set_level("warning")
    assert logging.getLogger("uvicorn.error").level == logging.WARNING
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING


def test_trace_is_a_level_in_every_place_log_level_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The config, --log-level and BROKER_LOG_LEVEL take trace (it is the number 5, TRACE,
    as uvicorn names it)."""
    assert level_number("TRACE") == TRACE == 5
    assert logging.getLevelName(TRACE) == "TRACE"
    settings = settings_from("log_level: trace\n" + MINIMAL_PROVIDERS)
    assert settings.log_level == "trace"
    with pytest.raises(ConfigError, match="log_level"):
        settings_from("log_level: verbose\n" + MINIMAL_PROVIDERS)
    args = cli._parser().parse_args(["serve", "--log-level", "trace"])
    assert args.log_level == "trace"
    monkeypatch.setenv("BROKER_LOG_LEVEL", "trace")
    assert settings_from(MINIMAL_PROVIDERS).log_level == "trace"


SESSION = "sid-6a1f93c0d2e84b7f"


async def answer_with_a_session(scope: Any, receive: Any, send: Any) -> None:
    """An identity provider's answer that sets a session cookie and a token header."""
    headers = [
        (b"content-type", b"application/json"),
        (b"set-cookie", f"IDPSESSION={SESSION}; HttpOnly".encode()),
        (b"X-Session-Token", f"it's {SESSION}".encode()),  # repr'd in double quotes
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.mark.smoke
def test_trace_shows_httpcore_without_credential_header_values() -> None:
    """httpcore at trace, on a real connection: every step, the answer's header names and
    harmless values, but not a session cookie's or a token header's value; and never the
    request's header values (the Basic credentials) or body (the form)."""
    password = "pw-0c4e7d51-in-the-body"
    out = io.StringIO()
    configure_logging("trace", "text", out)
    with serve_in_thread(answer_with_a_session) as url:
        httpx.post(url, data={"password": password}, auth=("app", "cs-basic-credentials"))
    written = out.getvalue()
    steps = [line for line in written.splitlines() if " httpcore." in line]
    assert any("receive_response_headers.complete" in line for line in steps), written
    assert any("send_request_headers.started" in line for line in steps)
    assert SESSION not in written
    assert password not in written
    assert base64.b64encode(b"app:cs-basic-credentials").decode() not in written
    assert f"(b'set-cookie', b'{REDACTED}')" in written
    assert f"(b'X-Session-Token', b'{REDACTED}')" in written
    assert "(b'content-type', b'application/json')" in written


MINIMAL_PROVIDERS = (
    "providers:\n  hub:\n    type: hub\n    url: https://hub.example.com\n"
    "    client_id: c\n    client_secret: s3cret-s3cret\n"
)


# -- timestamps and the audit trail's direct lines -------------------------------------


@pytest.mark.parametrize(
    "created",
    [
        0.0,
        MOMENT,
        1764040447.9994999,  # truncated to .999, not rounded up
        1764040447.9999995,  # rounds to the next second at microsecond precision
        1764040447.0000004,
        -0.5,  # before 1970
        2_000_000_000.5,
    ],
)
@pytest.mark.parametrize("millis", [True, False])
def test_timestamp_matches_datetime(created: float, millis: bool) -> None:
    spec = "milliseconds" if millis else "seconds"
    expected = datetime.fromtimestamp(created, UTC).isoformat(timespec=spec).replace("+00:00", "Z")
    assert _timestamp(created, millis=millis) == expected


@contextlib.contextmanager
def broker_handler_only() -> Iterator[None]:
    """Take pytest's capture handlers off the root logger, so the broker's is the only one.

    (A context manager, not a fixture: pytest adds its handlers after fixtures ran.)
    """
    root = logging.getLogger()
    saved = list(root.handlers)
    root.handlers[:] = [h for h in saved if getattr(h, "_broker_handler", False)]
    try:
        yield
    finally:
        root.handlers[:] = saved


AUDIT_CASES = [("reader", "hiro"), ('odd "client" name', "aerion"), ("ünïcode", "hub")]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_audit_direct_lines_equal_what_logging_writes(fmt: LogFormat) -> None:
    """The audit trail's direct write produces the same bytes as a logging call would."""
    direct, logged = io.StringIO(), io.StringIO()
    moments = [MOMENT, MOMENT + 0.5, MOMENT + 1.25]
    first = configure_logging("info", fmt, direct)
    trail = AuditTrail(clock=iter(moments).__next__)
    with broker_handler_only():
        assert sole_handler(trail.logger, logging.INFO) is first  # the direct write is used
        for client, provider in AUDIT_CASES:
            trail.token_served(client, provider)
    handler = configure_logging("info", fmt, logged)
    audit_log = logging.getLogger("broker.audit")
    for moment, (client, provider) in zip(moments, AUDIT_CASES, strict=True):
        rec = audit_log.makeRecord(
            audit_log.name,
            logging.INFO,
            "",
            0,
            "token served",
            (),
            None,
            extra={"client": client, "provider": provider},
        )
        rec.created = moment
        handler.handle(rec)
    assert direct.getvalue() == logged.getvalue()
    assert len(direct.getvalue().splitlines()) == 3
    if fmt == "json":
        assert [(d["client"], d["provider"]) for d in json_lines(direct)] == AUDIT_CASES


class CountingStream(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_audit_lines_of_one_loop_iteration_are_one_write() -> None:
    stream = CountingStream()
    configure_logging("info", "text", stream)
    trail = AuditTrail(clock=lambda: MOMENT)

    async def serve_three() -> str:
        for provider in ("alpha", "beta", "gamma"):
            trail.token_served("reader", provider)
        written_before_yielding = stream.getvalue()
        await asyncio.sleep(0)  # the end of this loop iteration
        return written_before_yielding

    with broker_handler_only():
        assert asyncio.run(serve_three()) == ""
    assert stream.writes == 1
    assert stream.getvalue().splitlines() == [
        f"2026-11-25T03:14:07Z INFO broker.audit token served client=reader provider={p}"
        for p in ("alpha", "beta", "gamma")
    ]


def test_audit_goes_through_logging_when_another_handler_listens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pytest's caplog (like an embedding app's handler) gets ordinary records."""
    stream = io.StringIO()
    configure_logging("info", "text", stream)
    caplog.set_level(logging.INFO, logger="broker.audit")
    trail = AuditTrail()
    assert sole_handler(trail.logger, logging.INFO) is None
    trail.token_served("reader", "hiro")
    audit = [r for r in caplog.records if r.name == "broker.audit"]
    assert [(r.client, r.provider) for r in audit] == [("reader", "hiro")]  # type: ignore[attr-defined]
    assert stream.getvalue().count("token served client=reader provider=hiro") == 1


def test_audit_respects_level_and_filters() -> None:
    stream = io.StringIO()
    configure_logging("warning", "text", stream)
    trail = AuditTrail()
    with broker_handler_only():
        trail.token_served("reader", "hiro")
    assert stream.getvalue() == ""

    configure_logging("info", "text", stream)
    audit_log = logging.getLogger("broker.audit")
    seen: list[str] = []

    def drop_reader(rec: logging.LogRecord) -> bool:
        client: str = rec.client  # type: ignore[attr-defined]
        seen.append(client)
        return client != "reader"

    audit_log.addFilter(drop_reader)
    try:
        with broker_handler_only():
            trail.token_served("reader", "hiro")
            trail.token_served("other", "hiro")
    finally:
        audit_log.removeFilter(drop_reader)
    assert seen == ["reader", "other"]
    assert stream.getvalue().splitlines()[0].endswith("token served client=other provider=hiro")
    assert len(stream.getvalue().splitlines()) == 1


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("disk full")


def test_audit_on_a_broken_stream_reports_like_logging(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "text", BrokenStream())
    with broker_handler_only():
        AuditTrail().token_served("reader", "hiro")  # must not raise into the request
    assert "--- Logging error ---" in capsys.readouterr().err
